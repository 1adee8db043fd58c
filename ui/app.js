// The status page: signs in with the API key, then polls the API and shows what it says.
// Everything shown goes through textContent (never innerHTML), so a word such as
// <img src=x onerror=...> is shown as text. Tokens live in sessionStorage only.
"use strict";

const API = new URL("../api/v1/", location.href);  // works behind a proxy's path prefix
const POLL_MS = 3000;
const STATS_EVERY = 5;  // polls between two reads of the chart's counts
const STATUS_NAMES = {pending: "waiting", started: "running", retrying: "retrying",
                      success: "done", failure: "failed"};
const $ = (id) => document.getElementById(id);

// --- tokens -------------------------------------------------------------------

const tokens = {
  get access() { return sessionStorage.getItem("ankisync.access"); },
  get refresh() { return sessionStorage.getItem("ankisync.refresh"); },
  // when to renew the access token, by this device's clock (ms)
  get renewAt() { return Number(sessionStorage.getItem("ankisync.renewAt")) || 0; },
  set(pair) {
    sessionStorage.setItem("ankisync.access", pair.accessToken);
    sessionStorage.setItem("ankisync.refresh", pair.refreshToken);
    sessionStorage.setItem("ankisync.renewAt", String(Date.now() + lifetime(pair.accessToken)));
  },
  clear() {
    for (const name of ["access", "refresh", "renewAt"]) {
      sessionStorage.removeItem(`ankisync.${name}`);
    }
  },
};

function lifetime(token) {
  // ms the token is good for, a minute early, from its own exp - iat: a phone whose
  // clock is off still renews on time; 0 when the token cannot be read
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    return Math.max(0, (claims.exp - claims.iat - 60) * 1000) || 0;
  } catch (error) {
    return 0;
  }
}

class SignedOut extends Error {}

async function post(path, body) {
  const answer = await fetch(new URL(path, API), {
    method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify(body), credentials: "omit", cache: "no-store"});
  return {status: answer.status, body: await answer.json().catch(() => ({}))};
}

let refreshing = null;  // one refresh at a time: a used refresh token stops working

function renew() {
  if (!refreshing) {
    refreshing = (async () => {
      if (!tokens.refresh) throw new SignedOut("please sign in");
      const answer = await post("refresh", {refreshToken: tokens.refresh});
      if (answer.status !== 201) {
        tokens.clear();
        throw new SignedOut("your session ended: please sign in again");
      }
      tokens.set(answer.body);
    })().finally(() => { refreshing = null; });
  }
  return refreshing;
}

async function api(method, path, body) {
  // One API call with the access token, renewed first when it is about to expire
  // and once more on a 401. {status, body}; throws SignedOut when no token works.
  if (!tokens.access) throw new SignedOut("please sign in");
  if (Date.now() >= tokens.renewAt) await renew();
  for (let attempt = 0; ; attempt++) {
    const options = {method, headers: {"x-access-token": tokens.access}, credentials: "omit",
                     cache: "no-store"};
    if (body !== undefined) {
      options.headers["content-type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const answer = await fetch(new URL(path, API), options);
    if (answer.status === 401 && attempt === 0) {
      await renew();
      continue;
    }
    if (answer.status === 401) {
      tokens.clear();
      throw new SignedOut("your session ended: please sign in again");
    }
    return {status: answer.status, body: await answer.json().catch(() => ({}))};
  }
}

// --- small DOM helpers ------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

const inert = new DOMParser();

function plain(html) {
  // A card field is HTML (Anki shows "a &lt; b" as a < b): its text, from a parsed
  // document where no script runs and no image loads; shown with textContent after.
  return inert.parseFromString(String(html || ""), "text/html").body.textContent;
}

function show(node, text) {
  // set a node's text and show it, or hide it when text is empty
  node.textContent = text || "";
  node.hidden = !text;
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  let ago;
  if (seconds < 60) ago = "just now";
  else if (seconds < 3600) ago = `${Math.round(seconds / 60)} min ago`;
  else if (seconds < 86400) ago = `${Math.round(seconds / 3600)} h ago`;
  else ago = `${Math.round(seconds / 86400)} days ago`;
  return `${date.toLocaleString()} (${ago})`;
}

// --- the service's state -------------------------------------------------------------

function syncHint(sync) {
  // what a person can do about the last sync's problem
  if (!sync.loggedIn) {
    return "No sync login yet: cards stay on this server until you run " +
           "./run.sh login USERNAME on it.";
  }
  const error = sync.lastError || "";
  if (error.startsWith("SyncAuthError")) {
    return "The sync server refused the login: run ./run.sh login USERNAME on the server " +
           "(then retry the failed cards below).";
  }
  if (error.startsWith("SyncUnavailable") || error.startsWith("SyncTimedOut")) {
    return "The sync server could not be reached: check the network and " +
           "ANKISYNC_SYNC_ENDPOINT. Cards are kept and go up with the next sync.";
  }
  if (error) return "The next card syncs again; the worker's log has the details.";
  return "";
}

function showHealth(health) {
  const alive = health.worker && health.worker.alive;
  $("worker").textContent = alive ? "running" : "not running";
  $("worker-panel").className = "panel " + (alive ? "good" : "bad");
  $("worker-hint").textContent = alive
    ? `pid ${health.worker.pid}`
    : "Cards wait until it runs: start ankisync with ./run.sh (or systemctl start ankisync).";

  const queue = health.queue || {};
  const waiting = (queue.pending || 0) + (queue.started || 0) + (queue.retrying || 0);
  $("queue").textContent = waiting === 0 ? "empty" : `${waiting} waiting`;
  $("queue-detail").textContent = `${queue.pending || 0} waiting, ${queue.started || 0} ` +
      `running, ${queue.retrying || 0} retrying; last 24 h: ` +
      `${(health.last24h || {}).success || 0} done, ${(health.last24h || {}).failure || 0} failed`;

  const sync = health.sync || {};
  const failed = Boolean(sync.lastError);
  $("sync").textContent = failed ? "failing" : sync.lastSyncAt ? (sync.lastOutcome || "ok")
      .replace(/_/g, " ") : "never";
  $("sync-panel").className = "panel " + (failed || !sync.loggedIn ? "bad" : "good");
  $("sync-detail").textContent = [
    sync.lastSyncAt ? `last good sync ${when(sync.lastSyncAt)}` : "no sync yet",
    sync.username ? `as ${sync.username}` : "",
    sync.endpoint ? `to ${sync.endpoint}` : ""].filter(Boolean).join(" ");
  show($("sync-error"), sync.lastError);
  show($("sync-hint"), syncHint(sync));

  $("voice").textContent = health.voice || (health.tts === "none" ? "no audio" : health.tts);
  $("voice-detail").textContent = health.tts === "none"
      ? "Cards get no audio: set ANKISYNC_GOOGLE_API_KEY or install espeak-ng."
      : `text-to-speech: ${health.tts}`;

  const problems = $("problems");
  problems.replaceChildren(...(health.problems || []).map((text) => el("li", "", text)));
  problems.hidden = !(health.problems || []).length;
  const overall = $("overall");
  overall.textContent = health.status;
  overall.className = "pill " + (health.status === "ok" ? "good" : "bad");
  overall.hidden = false;
}

// --- the jobs ---------------------------------------------------------------------

const rows = new Map();  // taskId -> its <li>, kept so buttons survive a refresh

function jobRow(task) {
  let row = rows.get(task.taskId);
  if (!row) {
    row = el("li", "job");
    row.dataset.task = task.taskId;
    const head = el("div", "job-head");
    head.append(el("span", "word"), el("span", "badge"));
    const actions = el("div", "actions");
    const retry = el("button", "retry", "Retry");
    retry.type = "button";
    retry.addEventListener("click", () => act(row, "POST", `tasks/${task.taskId}/retry`));
    const cancel = el("button", "cancel quiet", "Cancel");
    cancel.type = "button";
    cancel.addEventListener("click", () => act(row, "DELETE", `tasks/${task.taskId}`));
    actions.append(retry, cancel);
    row.append(head, el("p", "sentence"), el("p", "times"), el("p", "error"), actions);
    rows.set(task.taskId, row);
  }
  row.className = `job ${task.status}`;
  row.querySelector(".word").textContent = plain(task.word) || "(no word)";
  const badge = row.querySelector(".badge");
  badge.textContent = STATUS_NAMES[task.status] || task.status;
  badge.className = `badge ${task.status}`;
  row.querySelector(".sentence").textContent = plain(task.sentence);
  const times = [`added ${when(task.createdAt)}`];
  if (task.startedAt) times.push(`started ${when(task.startedAt)}`);
  if (task.completedAt) times.push(`finished ${when(task.completedAt)}`);
  times.push(`${task.attempts} ${task.attempts === 1 ? "attempt" : "attempts"}`);
  if (task.status === "success" && task.result) {
    times.push(task.result.synced ? "synced" : "not synced yet");
  }
  row.querySelector(".times").textContent = times.join(" · ");
  const error = task.error ? `${task.error.type}: ${task.error.message}` : "";
  show(row.querySelector(".error"), task.status === "success" ? "" : error);
  row.querySelector(".retry").hidden = task.status !== "failure";
  row.querySelector(".cancel").hidden = !["pending", "retrying"].includes(task.status);
  return row;
}

function showJobs(tasks) {
  const list = $("jobs");
  const wanted = tasks.map(jobRow);
  const keep = new Set(tasks.map((task) => task.taskId));
  for (const id of rows.keys()) if (!keep.has(id)) rows.delete(id);
  list.replaceChildren(...wanted);  // moves kept nodes, so a pressed button stays put
  $("jobs-empty").hidden = tasks.length > 0;
}

async function act(row, method, path) {
  for (const button of row.querySelectorAll("button")) button.disabled = true;
  try {
    const answer = await api(method, path);
    if (answer.status >= 400) notice(answer.body.message || `refused (${answer.status})`);
    await poll();
  } catch (error) {
    handle(error);
  } finally {
    for (const button of row.querySelectorAll("button")) button.disabled = false;
  }
}

// --- the chart: cards and failures per day, hand-drawn SVG ---------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

let chartDays = null;  // drawn again at the new width when the window is resized

function showChart(days) {
  chartDays = days;
  // drawn in the element's own pixels, so that labels keep their size at any width
  const width = Math.max(200, $("chart").clientWidth), height = 140, top = 14, bottom = 18;
  const most = Math.max(1, ...days.map((day) => Math.max(day.cards, day.failures)));
  const slot = width / days.length;
  const scale = (height - top - bottom) / most;
  const chart = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-labelledby": "chart-summary", class: "chart"});
  chart.append(svg("line", {x1: 0, x2: width, y1: height - bottom, y2: height - bottom,
                            class: "axis"}));
  chart.append(svg("text", {x: 0, y: 10, class: "label"}, `${most}`));
  days.forEach((day, index) => {
    const x = index * slot;
    const group = svg("g", {});
    group.append(svg("title", {}, `${day.date}: ${day.cards} cards, ${day.failures} failures`));
    const bar = Math.max(1, slot / 2 - 1);
    group.append(svg("rect", {x: x + 0.5, y: height - bottom - day.cards * scale, width: bar,
                              height: day.cards * scale, class: "cards"}));
    group.append(svg("rect", {x: x + 0.5 + bar, y: height - bottom - day.failures * scale,
                              width: bar, height: day.failures * scale, class: "failures"}));
    if ((days.length - 1 - index) % 7 === 0) {  // a date every week, today's last
      const last = index === days.length - 1;
      group.append(svg("text", {x: last ? width : x + slot / 2, y: height - 4, class: "label",
                                "text-anchor": last ? "end" : "middle"}, day.date.slice(5)));
    }
    chart.append(group);
  });
  $("chart").replaceChildren(chart);
  const cards = days.reduce((sum, day) => sum + day.cards, 0);
  const failures = days.reduce((sum, day) => sum + day.failures, 0);
  $("chart-summary").textContent = `${cards} cards made, ${failures} failed in the last ` +
      `${days.length} days`;
}

// --- polling ------------------------------------------------------------------------

let timer = null;
let polls = 0;
let finishedSeen = "";  // the listed cards that had finished when the chart last followed

async function poll() {
  const filter = $("filter").value;
  const list = `tasks?limit=50${filter ? `&status=${encodeURIComponent(filter)}` : ""}`;
  const daily = `stats/daily?days=30&utcOffset=${-new Date().getTimezoneOffset()}`;
  let [health, tasks, stats] = await Promise.all([
    api("GET", "health"), api("GET", list),
    polls++ % STATS_EVERY === 0 ? api("GET", daily) : null]);
  if (tasks.status === 200) {
    // a listed card finished since: the chart follows in this same round (read after
    // the list, it counts at least what the list shows), not at its next turn
    const finished = tasks.body.tasks.filter((task) => task.completedAt)
        .map((task) => `${task.taskId}:${task.status}`).join(" ");
    if (finished !== finishedSeen && !stats) stats = await api("GET", daily);
    finishedSeen = finished;
  }
  if (health.status === 200) showHealth(health.body);
  if (tasks.status === 200) showJobs(tasks.body.tasks);
  if (stats && stats.status === 200) showChart(stats.body.days);
  const bad = [health, tasks, stats].find((answer) => answer && answer.status !== 200);
  if (bad) notice(bad.body.message || `the server answered ${bad.status}`);
  else notice("");
  $("updated").textContent = new Date().toLocaleTimeString();
  if (!performance.getEntriesByName("ankisync-data-shown").length) {
    performance.mark("ankisync-data-shown");  // for bench/ui.py: the first data on screen
  }
}

function schedule() {
  clearTimeout(timer);
  timer = null;
  if (document.hidden || !tokens.access) return;  // paused while the tab is hidden
  timer = setTimeout(async () => {
    try {
      await poll();
    } catch (error) {
      handle(error);
    }
    if (timer !== null) schedule();
  }, POLL_MS);
}

function notice(text) {
  show($("notice"), text);
}

function handle(error) {
  if (error instanceof SignedOut) {
    signedOut(error.message);
  } else {
    notice(`cannot reach ankisync (${error.message}); trying again`);
  }
}

async function start() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  polls = 0;
  try {
    await poll();
  } catch (error) {
    handle(error);
  }
  schedule();
}

function signedOut(message) {
  clearTimeout(timer);
  timer = null;
  tokens.clear();
  rows.clear();
  $("jobs").replaceChildren();
  $("app").hidden = true;
  $("signout").hidden = true;
  $("overall").hidden = true;
  $("signin").hidden = false;
  show($("signin-error"), message === "please sign in" ? "" : message);
  $("key").focus();
}

// --- forms -------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const key = $("key");
  const answer = await post("login", {key: key.value}).catch(
    (error) => ({status: 0, body: {message: `cannot reach ankisync (${error.message})`}}));
  if (answer.status !== 201) {
    show($("signin-error"), answer.body.message || `refused (${answer.status})`);
    return;
  }
  key.value = "";  // the key itself is not kept
  show($("signin-error"), "");
  tokens.set(answer.body);
  start();
}

function hideSelection() {
  // wrap the selected text of the sentence (or the word, where it first appears) as {{c1::...}}
  const sentence = $("sentence");
  const text = sentence.value;
  let from = sentence.selectionStart, to = sentence.selectionEnd;
  if (from === to) {
    const word = $("word").value.trim();
    from = word ? text.toLowerCase().indexOf(word.toLowerCase()) : -1;
    if (from < 0) {
      show($("card-result"), "Select the word in the sentence first.");
      return;
    }
    to = from + word.length;
  }
  while (from < to && text[from] === " ") from++;  // a double-tap selects a trailing space
  while (to > from && text[to - 1] === " ") to--;
  const hidden = text.slice(from, to);
  sentence.value = `${text.slice(0, from)}{{c1::${hidden}}}${text.slice(to)}`;
  if (!$("word").value.trim()) $("word").value = hidden;
  sentence.focus();
  sentence.setSelectionRange(from, from + hidden.length + 8);
  show($("card-result"), "");
}

async function addCard(event) {
  event.preventDefault();
  const result = $("card-result");
  const card = {word: $("word").value.trim(), englishExample: $("sentence").value.trim()};
  try {
    const answer = await api("POST", "clozeNotes", card);
    if (answer.status === 202 || answer.status === 200) {
      result.className = "good";
      show(result, `Added “${card.word}”: it appears below once the worker has made it.`);
      $("word").value = "";
      $("sentence").value = "";
      await poll();
    } else {
      result.className = "error";
      show(result, answer.body.message || `refused (${answer.status})`);
    }
  } catch (error) {
    handle(error);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("card-form").addEventListener("submit", addCard);
  $("cloze").addEventListener("mousedown", (event) => event.preventDefault());  // keep selection
  $("cloze").addEventListener("click", hideSelection);
  $("filter").addEventListener("change", () => poll().catch(handle));
  $("signout").addEventListener("click", () => signedOut("signed out"));
  let resized = null;
  window.addEventListener("resize", () => {
    clearTimeout(resized);
    resized = setTimeout(() => { if (chartDays) showChart(chartDays); }, 200);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && tokens.access) poll().catch(handle);
    schedule();
  });
  if (tokens.access) start();
  else signedOut("please sign in");
});
