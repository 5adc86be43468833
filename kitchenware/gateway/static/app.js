// Kitchenware web page: send a photo (upload or URL) to POST /predict, show the top 3;
// "Why?" sends the same photo to POST /explain and shows the Grad-CAM overlay beside it.
"use strict";

const TOP = 3;
const $ = (id) => document.getElementById(id);
// How to send the photo shown now again (for "Why?"): a fresh body each time.
let lastPhoto = null;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function busy(on) {
  document.querySelectorAll("button, input").forEach((el) => { el.disabled = on; });
}

function showPreview(src) {
  const img = $("preview");
  img.src = src;
  img.alt = "the photo being classified";
  img.hidden = false;
}

function showResult(answer) {
  const ranked = Object.entries(answer.probabilities).sort((a, b) => b[1] - a[1]).slice(0, TOP);
  $("label").textContent = answer.label;
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, p] of ranked) {
    const li = document.createElement("li");
    li.className = "class-row";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(p * 100).toFixed(1)}%`;
    li.append(label, bar, pct);
    bars.append(li);
  }
  $("model").textContent = `model ${answer.model.name}, version ${answer.model.version}`;
  $("result").hidden = false;
}

function hideWhy() {
  $("why-panel").hidden = true;
  $("overlay").removeAttribute("src");
}

async function postJson(path, body, headers) {
  const response = await fetch(path, { method: "POST", body, headers });
  let answer;
  try {
    answer = await response.json();
  } catch (_) {
    throw new Error(`the gateway answered HTTP ${response.status}`);
  }
  if (!response.ok) {
    throw new Error(answer.error ? answer.error.message : `HTTP ${response.status}`);
  }
  return answer;
}

async function explainPhoto() {
  if (!lastPhoto) return;
  busy(true);
  setStatus("Working out why…");
  try {
    const answer = await postJson("/explain", lastPhoto.body(), lastPhoto.headers);
    $("why-photo").src = $("preview").src;
    $("overlay").src = `data:image/png;base64,${answer.explanation.overlay_png}`;
    $("why-caption").textContent =
      `Regions that drove “${answer.label}” (Grad-CAM, ${answer.explanation.grid_size.join("×")} ` +
      "cells): red most, blue least.";
    $("why-panel").hidden = false;
    setStatus("");
  } catch (err) {
    hideWhy();
    setStatus(`Could not explain: ${err.message}`, true);
  } finally {
    busy(false);
  }
}

$("why").addEventListener("click", explainPhoto);

async function classify(body, headers = {}) {
  hideWhy();
  busy(true);
  setStatus("Classifying…");
  try {
    const answer = await postJson("/predict", body, headers);
    showResult(answer);
    setStatus("");
  } catch (err) {
    $("result").hidden = true;
    setStatus(`Could not classify: ${err.message}`, true);
  } finally {
    busy(false);
  }
}

function classifyFile(file) {
  if (!file) return;
  showPreview(URL.createObjectURL(file));
  const form = () => {
    const data = new FormData();
    data.append("file", file, file.name);
    return data;
  };
  lastPhoto = { body: form, headers: {} };
  classify(form());
}

$("file").addEventListener("change", (event) => classifyFile(event.target.files[0]));

const drop = $("drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (event) => classifyFile(event.dataTransfer.files[0]));

$("url-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const url = $("url").value.trim();
  if (!url) return;
  showPreview(url);
  const headers = { "Content-Type": "application/json" };
  lastPhoto = { body: () => JSON.stringify({ url }), headers };
  classify(JSON.stringify({ url }), headers);
});
