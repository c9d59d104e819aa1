"""After promotion: what the served model sees (the prediction log), its reference at training time, and drift
between the two (`cmunext monitor drift`)."""
