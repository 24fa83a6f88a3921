// cellmil review page: one cell at a time, keyboard first; a gallery per class.
// Every text from the server is set with textContent (cell ids may hold markup).
"use strict";

const NAMES = {"blast": "Blast", "non-blast": "Non-blast", "unsure": "Unsure",
               "unusable": "Not usable", "": "Not answered yet"};
const KEYS = {"b": "blast", "n": "non-blast", "u": "unsure", "x": "unusable"};
const LETTER = {"blast": "B", "non-blast": "N", "unsure": "U", "unusable": "X"};
let S = null;        // state from /api/state
let pos = 0;         // position in the rater's order
let view = "single";
let queue = Promise.resolve();  // answers and undos run one after another, none dropped

function enqueue(fn) {
  queue = queue.then(fn, fn);
  return queue;
}

const $ = (id) => document.getElementById(id);

function banner(text) {
  const b = $("banner");
  b.textContent = text;
  b.hidden = !text;
}

async function post(url, body) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                              body: JSON.stringify(body || {})});
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

function progress() {
  $("progress").textContent = `${S.answered} / ${S.n}`;
  $("bar-fill").style.width = `${S.n ? (100 * S.answered) / S.n : 0}%`;
}

function firstOpen() {
  const c = S.cells.find((c) => c.label === null);
  return c ? c.i : null;
}

function renderSingle() {
  const c = S.cells[pos];
  const img = $("cell");
  img.hidden = false;
  $("cell-missing").hidden = true;
  img.src = `/img/${c.i}`;
  $("pos").textContent = String(pos + 1);
  $("count").textContent = String(S.n);
  $("slide").textContent = c.slide_id;
  $("cellid").textContent = c.cell_id;
  $("answer").textContent = c.label ? NAMES[c.label] : "\u2014";
  $("answer").className = c.label || "";
  document.querySelectorAll("button.ans").forEach((b) => {
    b.classList.toggle("chosen", b.dataset.label === c.label);
  });
  const strip = $("strip");
  strip.replaceChildren();
  for (let k = 1; k <= c.neighbours; k++) {
    const n = document.createElement("img");
    n.src = `/img/${c.i}/n/${k}`;
    n.alt = `neighbour ${k}`;
    strip.appendChild(n);
  }
  $("strip").parentElement.hidden = c.neighbours === 0;
  if (pos + 1 < S.n) new Image().src = `/img/${S.cells[pos + 1].i}`;  // preload
  if (S.answered === S.n) banner(`All ${S.n} cells answered, thank you. ` +
                                 `Your answers are in ${S.file}; you can still change any.`);
}

function tile(c) {
  const f = document.createElement("figure");
  const img = document.createElement("img");
  img.src = `/thumb/${c.i}`;
  img.loading = "lazy";
  img.alt = `cell ${c.i + 1}`;
  img.title = "open this cell";
  img.addEventListener("click", () => { pos = c.i; show("single"); });
  const cap = document.createElement("figcaption");
  for (const label of S.labels) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = LETTER[label];
    b.title = NAMES[label];
    b.className = `mini ${label}` + (c.label === label ? " chosen" : "");
    b.dataset.i = String(c.i);
    b.dataset.label = label;
    b.addEventListener("click", () => answer(label, c.i, false));
    cap.appendChild(b);
  }
  f.append(img, cap);
  return f;
}

function renderGallery() {
  const root = $("sections");
  root.replaceChildren();
  for (const label of [...S.labels, ""]) {
    const cells = S.cells.filter((c) => (c.label || "") === label);
    if (label === "" && !cells.length) continue;
    const sec = document.createElement("section");
    sec.className = `class ${label || "open"}`;
    sec.dataset.label = label;
    const h = document.createElement("h2");
    h.textContent = `${NAMES[label]} (${cells.length})`;
    const tiles = document.createElement("div");
    tiles.className = "tiles";
    cells.forEach((c) => tiles.appendChild(tile(c)));
    sec.append(h, tiles);
    root.appendChild(sec);
  }
}

function render() {
  progress();
  if (view === "single") renderSingle(); else renderGallery();
}

function show(v) {
  view = v;
  $("single").hidden = v !== "single";
  $("gallery").hidden = v !== "gallery";
  $("view-single").classList.toggle("active", v === "single");
  $("view-gallery").classList.toggle("active", v === "gallery");
  render();
}

// i: a position, or null for the cell on screen when the action runs (keys typed ahead)
function answer(label, i, advance) {
  return enqueue(async () => {
    const at = i === null ? pos : i;
    try {
      const r = await post("/api/answer", {i: at, label});
      S.cells[r.i].label = r.label;
      S.answered = r.answered;
      banner("");
      if (advance && pos === at && pos + 1 < S.n) pos += 1;
    } catch (e) {
      banner(`NOT SAVED: ${e.message}. Is the server still running? Your earlier answers are safe.`);
    }
    render();
  });
}

function undo() {
  return enqueue(async () => {
    try {
      const r = await post("/api/undo");
      if (r.i === null) banner("Nothing to undo.");
      else { S.cells[r.i].label = r.label; S.answered = r.answered; pos = r.i; banner(""); }
    } catch (e) {
      banner(`Undo failed: ${e.message}`);
    }
    render();
  });
}

function move(step) {
  enqueue(() => {
    pos = Math.min(S.n - 1, Math.max(0, pos + step));
    if (view !== "single") show("single"); else render();
  });
}

// a clicked button gives the focus back, so Space/Enter never repeat an answer
document.addEventListener("click", (ev) => {
  if (ev.target instanceof HTMLElement && ev.target.closest("button")) ev.target.closest("button").blur();
});

function onKey(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || !S) return;
  const k = ev.key.toLowerCase();
  if (KEYS[k] && view === "single") answer(KEYS[k], null, true);
  else if (k === "z") undo();
  else if (ev.key === "ArrowRight") move(1);
  else if (ev.key === "ArrowLeft") move(-1);
  else if (k === "g") show("gallery");
  else if (k === "c" || ev.key === "Escape") show("single");
  else if (k === "f") { const f = firstOpen(); if (f !== null) { pos = f; show("single"); } }
  else return;
  ev.preventDefault();
}

async function start() {
  const r = await fetch("/api/state");
  if (!r.ok) { banner(`Cannot load the audit (HTTP ${r.status}).`); return; }
  S = await r.json();
  pos = S.start;
  $("rater").textContent = S.rater;
  $("file").textContent = S.file;
  document.querySelectorAll("button.ans").forEach((b) => {
    b.addEventListener("click", () => answer(b.dataset.label, null, true));
  });
  $("prev").addEventListener("click", () => move(-1));
  $("next").addEventListener("click", () => move(1));
  $("undo").addEventListener("click", undo);
  $("first-open").addEventListener("click", () => {
    const f = firstOpen(); if (f !== null) { pos = f; render(); }
  });
  $("view-single").addEventListener("click", () => show("single"));
  $("view-gallery").addEventListener("click", () => show("gallery"));
  $("cell").addEventListener("error", () => { $("cell").hidden = true; $("cell-missing").hidden = false; });
  document.addEventListener("keydown", onKey);
  document.body.dataset.ready = "1";
  render();
}

start();
