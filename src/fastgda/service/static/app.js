// The fastgda page: plain JS against the same HTTP API as every other client (no build step, works offline).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("fastgda-token") || "", objectUrls: [], maxK: 100 };

// Plain words for the baselines the API names ("untuned minilm"): what was compared with what.
const BASELINES = {
  minilm: "text similarity: the prompt against each training caption (MiniLM)",
  effnet: "image similarity: the query image against each training image (EfficientNet)",
  dino: "image similarity: the query image against each training image (DINO)",
  "clip-text": "text similarity: the prompt against each training caption (CLIP)",
  "clip-image": "image similarity: the query image against each training image (CLIP)",
};

function baselineWords(method) {
  const part = method.replace(/^untuned /, "");
  return BASELINES[part] || `similarity of plain ${part} features`;
}

function headers(extra = {}) {
  return state.token ? { ...extra, Authorization: `Bearer ${state.token}` } : extra;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    if (response.status === 401) {
      throw new Error("The server refused the access token (401). Enter the token the server was started with.");
    }
    throw new Error(`The server answered ${response.status}: ${detail}`);
  }
  return response;
}

// Images behind the token cannot be plain <img src>: fetch them with the header and show a blob URL.
async function loadImage(img, url) {
  const blob = await (await api(url)).blob();
  const objectUrl = URL.createObjectURL(blob);
  state.objectUrls.push(objectUrl);
  img.src = objectUrl;
}

function forgetImages() {
  state.objectUrls.forEach((u) => URL.revokeObjectURL(u));
  state.objectUrls = [];
}

function k() {
  const asked = parseInt($("k").value, 10) || 10;
  const used = Math.max(1, Math.min(state.maxK, asked));
  $("k-note").textContent = used !== asked ? `This server shows at most ${state.maxK}; showing ${used}.` : "";
  return used;
}

function clearResults() {
  forgetImages();
  ["query", "results", "baseline"].forEach((id) => { $(id).hidden = true; });
  $("gallery").replaceChildren();
  $("baseline-gallery").replaceChildren();
}

function showDetail(item, rank) {
  $("detail-title").textContent = `Training image ${item.id} (rank ${rank})`;
  $("detail-id").textContent = item.id;
  $("detail-score").textContent = item.score.toFixed(4);
  $("detail-share").textContent = `${(100 * item.share).toFixed(1)}%`;
  const list = $("detail-captions");
  list.replaceChildren(...item.captions.map((c) => Object.assign(document.createElement("li"), { textContent: c })));
  $("detail-image").alt = `training image ${item.id}: ${item.captions[0] || ""}`;
  loadImage($("detail-image"), `${item.image_url}?size=256`).catch((e) => setStatus(e.message, true));
  $("detail").showModal();
}

function renderGallery(list, items) {
  list.replaceChildren();
  items.forEach((item, n) => {
    const li = document.createElement("li");
    li.dataset.id = item.id;
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-label", `rank ${n + 1}: training image ${item.id}, score ${item.score.toFixed(3)}; show details`);
    const img = document.createElement("img");
    img.alt = item.captions[0] || `training image ${item.id}`;
    const label = document.createElement("span");
    const rank = Object.assign(document.createElement("span"), { className: "rank", textContent: `#${n + 1}` });
    const numbers = Object.assign(document.createElement("span"), {
      className: "numbers",
      textContent: `score ${item.score.toFixed(3)} · share ${(100 * item.share).toFixed(1)}%`,
    });
    label.append(rank, ` training image ${item.id}`, numbers);
    const caption = Object.assign(document.createElement("span"), { className: "caption", textContent: item.captions[0] || "" });
    button.append(img, label, caption);
    button.addEventListener("click", () => showDetail(item, n + 1));
    li.append(button);
    list.append(li);
    loadImage(img, item.image_url).catch((e) => setStatus(e.message, true));
  });
}

function render(answer, prompt, queryImageUrl) {
  forgetImages();
  $("query").hidden = false;
  $("query-image").src = queryImageUrl;
  $("query-prompt").textContent = prompt;
  const t = answer.timings;
  $("timings").textContent = Object.entries(t).map(([name, ms]) => `${name.replace("_ms", "")} ${ms.toFixed(1)} ms`).join(" · ");
  $("results").hidden = false;
  renderGallery($("gallery"), answer.results);
  $("baseline").hidden = !answer.baseline;
  if (answer.baseline) {
    $("baseline-title").textContent = "Plain similarity search (no attribution training)";
    $("baseline-legend").textContent = `Ranked by ${baselineWords(answer.baseline.method)}. Its scores are ` +
      "cosine similarities, on another scale than fastgda's scores: compare the images and their order, not the numbers.";
    renderGallery($("baseline-gallery"), answer.baseline.results);
  }
  setStatus(`Found ${answer.results.length} training images.`);
}

async function busy(button, work) {
  button.disabled = true;
  setStatus("Working…");
  try {
    await work();
  } catch (error) {
    clearResults(); // what is left on screen must never read as the failed request's answer
    setStatus(error.message, true);
  } finally {
    button.disabled = false;
  }
}

$("upload-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("upload-button"), async () => {
    const file = $("upload-image").files[0];
    const prompt = $("upload-prompt").value;
    const form = new FormData();
    form.append("image", file);
    form.append("prompt", prompt);
    form.append("k", String(k()));
    form.append("baseline", String($("compare").checked));
    const answer = await (await api("/v1/attribute", { method: "POST", body: form })).json();
    render(answer, prompt, URL.createObjectURL(file));
  });
});

$("generate-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("generate-button"), async () => {
    const prompt = $("generate-prompt").value;
    const body = JSON.stringify({ prompt, seed: parseInt($("generate-seed").value, 10) || 0, k: k(), baseline: $("compare").checked });
    const answer = await (await api("/v1/generate-and-attribute", {
      method: "POST", body, headers: { "Content-Type": "application/json" },
    })).json();
    render(answer, prompt, answer.image);
  });
});

$("token-section").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value;
  sessionStorage.setItem("fastgda-token", state.token);
  setStatus("");
  connect();
});

async function connect() {
  try {
    const health = await (await fetch("/healthz")).json();
    $("token-section").hidden = !health.auth;
    if (health.auth && !state.token) {
      $("server-info").textContent = "This server needs an access token.";
      return;
    }
    const info = await (await api("/v1/info")).json();
    $("server-info").textContent = `${info.items} training images indexed (query features: ${info.spec}).`;
    state.maxK = info.limits.max_k;
    setStatus("");
    $("generate-button").disabled = !info.generate;
    $("generate-unavailable").hidden = info.generate;
    $("compare").disabled = !info.baseline;
    $("k").max = info.limits.max_k;
  } catch (error) {
    $("server-info").textContent = error.message.startsWith("The server refused")
      ? error.message : `Cannot reach the server: ${error.message}`;
  }
}

connect();
