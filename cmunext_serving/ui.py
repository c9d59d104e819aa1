"""The service's web page: upload an ultrasound image, see the outlined lesion and its numbers.

Plain HTML and JavaScript calling /overlay and /segment_json; `/?demo=1` runs the built-in demo image
on load (used by the headless-browser test). With a token set on the server, paste it in the page.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CMUNeXt lesion segmentation</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d2733; background: #f6f8fa; }
 h1 { font-size: 1.4rem; margin: 0 0 .3rem; } .note { color: #5b6876; font-size: .85rem; }
 form, .panel { background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 1rem; margin: 1rem 0; }
 label { margin-right: 1rem; } button { padding: .4rem .9rem; margin-right: .5rem; }
 #result { display: none; gap: 1.5rem; flex-wrap: wrap; align-items: flex-start; }
 #overlay { max-width: min(640px, 95vw); border: 1px solid #d8dee4; border-radius: 4px; background: #000; }
 table { border-collapse: collapse; min-width: 300px; } td, th { text-align: left; padding: .25rem .6rem; border-bottom: 1px solid #eef1f4; }
 th { color: #5b6876; font-weight: 500; } #error { color: #b42318; font-weight: 600; white-space: pre-wrap; }
</style></head>
<body>
<h1>CMUNeXt lesion segmentation</h1>
<div class="note">Upload a breast-ultrasound image (PNG or JPEG). Research prototype, not a medical device.</div>
<form id="form">
 <label>Image <input type="file" id="file" accept="image/png,image/jpeg"></label>
 <label>API token <input type="password" id="token" placeholder="only if the server needs one" size="24"></label>
 <button type="submit">Segment</button><button type="button" id="demo">Try the demo image</button>
</form>
<div id="error"></div>
<div id="status" class="note"></div>
<div id="result" class="panel">
 <img id="overlay" alt="image with the predicted lesion outlined">
 <table id="numbers"><tbody>
  <tr><th>image size</th><td id="size"></td></tr>
  <tr><th>lesion area</th><td id="area"></td></tr>
  <tr><th>lesion fraction</th><td id="fraction"></td></tr>
  <tr><th>regions</th><td id="regions"></td></tr>
  <tr><th>mean probability in mask</th><td id="meanprob"></td></tr>
  <tr><th>model</th><td id="model"></td></tr>
  <tr><th>latency (server)</th><td id="latency"></td></tr>
 </tbody></table>
</div>
<script>
const $ = (id) => document.getElementById(id);
$("token").value = sessionStorage.getItem("cmunext-token") || "";
function headers() {
  const t = $("token").value.trim();
  sessionStorage.setItem("cmunext-token", t);
  return t ? { "Authorization": "Bearer " + t } : {};
}
async function call(path, blob, name) {
  const body = new FormData();
  body.append("image", blob, name);
  const r = await fetch(path, { method: "POST", body, headers: headers() });
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error || msg; } catch (e) {}
    throw new Error(msg);
  }
  return r;
}
async function run(blob, name) {
  $("error").textContent = ""; $("status").textContent = "segmenting " + name + " ...";
  try {
    const [over, js] = await Promise.all([call("/overlay", blob, name), call("/segment_json", blob, name)]);
    const d = await js.json();
    $("overlay").src = URL.createObjectURL(await over.blob());
    $("size").textContent = d.width + " x " + d.height + " px";
    $("area").textContent = d.lesion_pixels.toLocaleString() + " px";
    $("fraction").textContent = (100 * d.lesion_fraction).toFixed(2) + " %";
    $("regions").textContent = d.components.length ? d.components.map(
      (c) => c.width + "x" + c.height + " at (" + c.x + ", " + c.y + ")").join("; ") : "none";
    $("meanprob").textContent = d.mean_probability === null ? "n/a (no lesion found)" : d.mean_probability.toFixed(3);
    $("model").textContent = (d.model.mlflow_model || "") + " v" + (d.model.mlflow_version || "?") + " (" + d.model.tag + ", " + d.model.format + ")";
    $("latency").textContent = d.latency_ms.total.toFixed(1) + " ms (inference " + d.latency_ms.inference.toFixed(1) + " ms)";
    $("result").style.display = "flex"; $("status").textContent = "done: " + name;
    document.body.dataset.state = "done";
  } catch (e) {
    $("error").textContent = "Error: " + e.message; $("status").textContent = "";
    document.body.dataset.state = "error";
  }
}
$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const f = $("file").files[0];
  if (!f) { $("error").textContent = "Choose an image first."; return; }
  run(f, f.name);
});
async function demo() {
  const r = await fetch("/ui/demo.png");
  run(await r.blob(), "demo.png");
}
$("demo").addEventListener("click", demo);
if (new URLSearchParams(location.search).get("demo")) demo();
</script>
</body></html>
"""
