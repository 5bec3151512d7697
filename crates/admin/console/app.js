// The tern console: one page over the admin JSON API (docs/ops/console.md).
//
// Rules this file keeps:
// - Everything the API returns (addresses, subjects, replies, headers) comes from strangers: it
//   is put into the page with textContent and DOM properties only, never as HTML. A message's
//   HTML is shown only inside <iframe sandbox="" srcdoc>: no scripts, an opaque origin, and the
//   page's Content-Security-Policy (inherited by srcdoc frames) blocks remote images.
// - Nothing is loaded from the network but this server: no CDN, so the console works offline.
// - The bearer token (RFC 6750) is kept in sessionStorage and sent on every API request; a 401
//   or 403 shows the token prompt.
"use strict";

const TOKEN_KEY = "tern.admin.token";
const REFRESH_MS = 5000;
const PAGE = 100;

// ------------------------------------------------------------------ helpers

/** An element: el("td", {className: "x", title: "t"}, "text", otherNode). Strings become text. */
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else if (k in node) node[k] = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

const enc = encodeURIComponent;

/** "12s", "5m", "3h 4m", "2d 3h". */
function span(secs) {
  secs = Math.max(0, Math.round(secs));
  if (secs < 60) return secs + "s";
  const m = Math.floor(secs / 60);
  if (m < 60) return m + "m";
  const h = Math.floor(m / 60);
  if (h < 24) return h + "h" + (m % 60 ? " " + (m % 60) + "m" : "");
  const d = Math.floor(h / 24);
  return d + "d" + (h % 24 ? " " + (h % 24) + "h" : "");
}

/** "in 12m" / "now" / "5m ago" for an RFC 3339 time. */
function relative(rfc3339) {
  if (!rfc3339) return "";
  const t = Date.parse(rfc3339);
  if (Number.isNaN(t)) return rfc3339;
  const d = (t - Date.now()) / 1000;
  if (Math.abs(d) < 5) return "now";
  return d > 0 ? "in " + span(d) : span(-d) + " ago";
}

/** "2026-12-02 19:20:11 UTC". */
function when(rfc3339) {
  if (!rfc3339) return "";
  const t = new Date(rfc3339);
  if (Number.isNaN(t.getTime())) return rfc3339;
  return t.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z").replace("Z", " UTC");
}

function bytes(n) {
  if (n === undefined || n === null) return "";
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function shortId(id) {
  return String(id || "").slice(0, 12);
}

function badge(text, kind) {
  return el("span", { className: "badge badge-" + (kind || text) }, text);
}

/** The plain words of a reply, with the raw reply under it (and as a tooltip). */
function reply(plain, raw) {
  if (!raw && !plain) return el("span", { className: "muted" }, "—");
  return el("div", { className: "reply", title: raw || "" },
    el("span", { className: "plain" }, plain || raw),
    plain && raw ? el("span", { className: "raw" }, raw) : null);
}

// ------------------------------------------------------------------ API

class AuthNeeded extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, options) {
  const opts = Object.assign({ method: "GET" }, options || {});
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  opts.headers = headers;
  opts.cache = "no-store";
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    throw new ApiError(0, "cannot reach tern's admin server (" + e.message + ")");
  }
  if (res.status === 401 || res.status === 403) {
    let msg = res.status === 401 ? "This tern needs the admin token." : "Wrong token: try again.";
    throw new AuthNeeded(res.status, msg);
  }
  if (opts.raw) {
    if (!res.ok) throw new ApiError(res.status, res.status + " " + res.statusText);
    return res;
  }
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    body = null;
  }
  if (!res.ok) {
    const msg = body && body.error ? body.error : res.status + " " + res.statusText;
    throw new ApiError(res.status, msg, body);
  }
  return body;
}

// ------------------------------------------------------------------ token prompt

const login = {
  show(status, message) {
    const box = document.getElementById("login");
    const err = document.getElementById("login-error");
    if (status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      err.textContent = message;
    } else {
      err.textContent = token() ? message : "";
    }
    box.classList.remove("hidden");
    document.getElementById("main").classList.add("hidden");
    document.getElementById("signout").classList.add("hidden");
    document.getElementById("health").textContent = "";
    document.getElementById("token").focus();
    stopRefresh();
  },
  hide() {
    document.getElementById("login").classList.add("hidden");
    document.getElementById("main").classList.remove("hidden");
  },
};

function setupLogin() {
  document.getElementById("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("token");
    const value = input.value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    input.value = "";
    document.getElementById("login-error").textContent = "";
    render();
  });
  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    render();
  });
}

// ------------------------------------------------------------------ routing

let refreshTimer = null;
let renderSeq = 0;

function stopRefresh() {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
}

function parseHash() {
  const h = location.hash.replace(/^#\/?/, "");
  const [path, query] = h.split("?");
  const parts = path.split("/").filter((p) => p !== "").map((p) => {
    try {
      return decodeURIComponent(p);
    } catch (_) {
      return p;
    }
  });
  return { parts, params: new URLSearchParams(query || "") };
}

async function render() {
  const seq = ++renderSeq;
  stopRefresh();
  const { parts, params } = parseHash();
  const main = document.getElementById("main");
  const section = parts[0] || "queue";
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === section);
  }
  document.getElementById("signout").classList.toggle("hidden", !token());
  try {
    await health();
    if (seq !== renderSeq) return;
    login.hide();
    let view;
    if (section === "queue" && parts.length === 1) view = await queueView(params, seq);
    else if (section === "queue") view = await entryView(parts[1]);
    else if (section === "mail" && parts.length === 1) view = await mailboxesView();
    else if (section === "mail" && parts.length === 2) view = await messagesView(parts[1], params);
    else if (section === "mail") view = await messageView(parts[1], parts.slice(2).join("/"));
    else view = el("p", { className: "notice" }, "No such page. ", el("a", { href: "#/queue" }, "Go to the queue"));
    if (seq !== renderSeq) return;
    clear(main).append(view);
  } catch (e) {
    if (seq !== renderSeq) return;
    if (e instanceof AuthNeeded) {
      login.show(e.status, e.message);
      return;
    }
    clear(main).append(el("p", { className: "notice error", role: "alert" }, e.message));
  }
}

async function health() {
  const h = await api("/api/health");
  const box = document.getElementById("health");
  box.textContent = [h.hostname, "v" + h.version, h.queue_messages + " queued", "up " + span(h.uptime_seconds)]
    .filter(Boolean).join(" · ");
  return h;
}

// ------------------------------------------------------------------ queue list

const ACTIONS = ["flush", "hold", "release", "bounce", "delete"];
const ACTION_HELP = {
  flush: "retry now",
  hold: "stop delivery until released",
  release: "resume delivery",
  bounce: "give up and send a bounce (DSN) to the sender",
  delete: "remove without a bounce",
};

function queueQuery(params) {
  const q = new URLSearchParams();
  for (const k of ["status", "domain", "sender"]) {
    const v = (params.get(k) || "").trim();
    if (v) q.set(k, v);
  }
  return q;
}

async function queueView(params, seq) {
  const filters = queueQuery(params);
  const form = el("form", { className: "filters", id: "queue-filters" },
    el("label", null, "Status ",
      el("select", { name: "status", id: "f-status" },
        ["", "pending", "deferred", "held"].map((s) =>
          el("option", { value: s, selected: filters.get("status") === s || (!s && !filters.get("status")) },
            s || "any")))),
    el("label", null, "Domain ", el("input", { name: "domain", id: "f-domain", value: filters.get("domain") || "", placeholder: "gmail.com" })),
    el("label", null, "Sender ", el("input", { name: "sender", id: "f-sender", value: filters.get("sender") || "", placeholder: "alice@example.org" })),
    el("button", { type: "submit" }, "Filter"),
    el("button", { type: "button", className: "link", on: { click: () => { location.hash = "#/queue"; } } }, "Clear"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = queueQuery(new URLSearchParams(new FormData(form)));
    const next = "#/queue" + (q.toString() ? "?" + q : "");
    if (location.hash === next) render();
    else location.hash = next;
  });

  const result = el("p", { className: "result", id: "bulk-result", role: "status" });
  const bulk = el("div", { className: "bulk" },
    el("span", { className: "muted" }, filters.toString() ? "For the filtered entries: " : "For every entry: "),
    ACTIONS.map((a) => el("button", {
      type: "button", className: a === "delete" || a === "bounce" ? "danger" : "", title: ACTION_HELP[a],
      dataset: { bulk: a }, on: { click: () => bulkAction(a, filters, result) },
    }, a[0].toUpperCase() + a.slice(1) + " all")));

  const tbody = el("tbody");
  const summary = el("p", { className: "muted", id: "queue-summary" });
  const problems = el("div", { className: "notice error hidden", id: "queue-problems", role: "alert" });
  const table = el("table", { className: "queue", id: "queue-table" },
    el("thead", null, el("tr", null,
      ["ID", "Age", "Sender", "Recipients", "Status", "Last reply", "Next retry"].map((h) => el("th", null, h)))),
    tbody);

  async function load() {
    const q = new URLSearchParams(filters);
    q.set("limit", "500");
    const data = await api("/api/queue?" + q);
    fillQueue(tbody, summary, problems, data);
  }
  await load();
  if (seq === renderSeq) {
    refreshTimer = setInterval(() => {
      if (document.hidden) return;
      load().catch((e) => {
        if (e instanceof AuthNeeded) login.show(e.status, e.message);
        else summary.textContent = "Refresh failed: " + e.message;
      });
    }, REFRESH_MS);
  }
  return el("section", null, el("h1", null, "Queue"), form, bulk, result,
    problems, summary, table);
}

function fillQueue(tbody, summary, problems, data) {
  const entries = data.entries || [];
  if (problems) {
    clear(problems).classList.toggle("hidden", !(data.problems || []).length);
    for (const p of data.problems || []) problems.append(el("div", null, typeof p === "string" ? p : pairs(p)));
  }
  summary.textContent = entries.length === data.total
    ? data.total + (data.total === 1 ? " entry" : " entries")
    : "showing " + entries.length + " of " + data.total + " entries";
  clear(tbody);
  if (!entries.length) {
    tbody.append(el("tr", null, el("td", { colSpan: 7, className: "empty" }, "The queue is empty.")));
    return;
  }
  for (const e of entries) {
    const rcpts = e.recipients || [];
    const last = rcpts.find((r) => r.last_reply && r.state !== "delivered") || rcpts.find((r) => r.last_reply);
    const href = "#/queue/" + enc(e.id);
    const row = el("tr", { dataset: { id: e.id }, className: "clickable", on: { click: (ev) => {
      if (ev.target.closest("a")) return;
      location.hash = href;
    } } },
      el("td", null, el("a", { href, className: "mono" }, shortId(e.id))),
      el("td", { title: when(e.received_at) }, span(e.age_secs)),
      el("td", { className: "addr" }, e.sender || "<>"),
      el("td", { className: "addr" }, rcpts.map((r) =>
        el("div", null, r.address, " ", el("span", { className: "state state-" + r.state }, r.state)))),
      el("td", null, badge(e.status)),
      el("td", { className: "reply-cell" }, last ? reply(last.plain, last.last_reply) : el("span", { className: "muted" }, "not tried yet")),
      el("td", { title: when(e.next_attempt) }, e.held ? "held" : (e.next_attempt ? relative(e.next_attempt) : "—")));
    tbody.append(row);
  }
}

async function bulkAction(action, filters, result) {
  const q = new URLSearchParams(filters);
  const scope = q.toString() ? "every entry matching " + q.toString().replaceAll("&", ", ") : "EVERY entry in the queue";
  if (!confirm(action[0].toUpperCase() + action.slice(1) + " " + scope + "?\n(" + ACTION_HELP[action] + ")")) return;
  if (!q.toString()) q.set("all", "true");
  result.className = "result";
  try {
    const r = await api("/api/queue/" + action + "?" + q, { method: "POST" });
    result.textContent = action + ": " + r.done + " of " + r.matched + " done" +
      (r.busy ? ", " + r.busy + " busy (being delivered, try again)" : "") +
      (r.errors && r.errors.length ? "; errors: " + r.errors.map((x) => typeof x === "string" ? x : JSON.stringify(x)).join("; ") : "");
    result.classList.add("ok");
  } catch (e) {
    if (e instanceof AuthNeeded) return login.show(e.status, e.message);
    result.textContent = action + " failed: " + e.message;
    result.classList.add("error");
  }
  const { params } = parseHash();
  const tbody = document.querySelector("#queue-table tbody");
  const summary = document.getElementById("queue-summary");
  const qq = queueQuery(params);
  qq.set("limit", "500");
  try {
    fillQueue(tbody, summary, document.getElementById("queue-problems"), await api("/api/queue?" + qq));
  } catch (_) { /* the next refresh shows it */ }
}

// ------------------------------------------------------------------ one entry

async function entryView(id) {
  let e;
  try {
    e = await api("/api/queue/" + enc(id));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      return el("section", null, el("h1", null, "Queue entry ", el("span", { className: "mono" }, id)),
        el("p", { className: "notice", role: "alert" }, "This entry is no longer in the queue: delivered, bounced or deleted. "),
        el("p", null, el("a", { href: "#/queue" }, "← Back to the queue")));
    }
    throw err;
  }
  const result = el("p", { className: "result", id: "action-result", role: "status" });
  const actions = el("div", { className: "actions" },
    ACTIONS.map((a) => el("button", {
      type: "button", className: a === "delete" || a === "bounce" ? "danger" : "", title: ACTION_HELP[a],
      dataset: { action: a }, on: { click: () => entryAction(e.id, a, result) },
    }, a[0].toUpperCase() + a.slice(1))));

  const envelope = el("dl", { className: "facts" },
    fact("Status", badge(e.status)),
    fact("Sender", e.sender || "<> (a bounce)"),
    fact("Received", when(e.received_at) + " (" + span(e.age_secs) + " ago)"),
    fact("Size", bytes(e.size)),
    fact("Next attempt", e.held ? "held: no delivery until released" : (e.next_attempt ? when(e.next_attempt) + " (" + relative(e.next_attempt) + ")" : "—")));

  const rcpts = el("table", { className: "recipients" },
    el("thead", null, el("tr", null, ["Recipient", "State", "Attempts", "Last reply", "Next attempt"].map((h) => el("th", null, h)))),
    el("tbody", null, (e.recipients || []).map((r) => el("tr", null,
      el("td", { className: "addr" }, r.address, r.original && r.original !== r.address ? el("div", { className: "muted" }, "originally " + r.original) : null),
      el("td", null, el("span", { className: "state state-" + r.state }, r.state)),
      el("td", null, String(r.attempts ?? "")),
      el("td", null, reply(r.plain, r.last_reply)),
      el("td", { title: when(r.next_attempt) }, r.next_attempt ? relative(r.next_attempt) : "—")))));

  const timeline = el("ol", { className: "timeline", id: "timeline" },
    (e.timeline || []).map((t) => el("li", { className: "ev ev-" + t.event, dataset: { event: t.event } },
      el("div", { className: "ev-head" },
        el("time", { dateTime: t.at, title: relative(t.at) }, when(t.at)), " ",
        badge(t.event.replace("_", " "), "ev"), " ",
        el("span", { className: "ev-text" }, t.text || "")),
      detailLine(t))));

  const attempts = el("table", { className: "attempts" },
    el("thead", null, el("tr", null, ["When", "Recipient", "Host", "TLS", "Reply"].map((h) => el("th", null, h)))),
    el("tbody", null, (e.attempts || []).length ? (e.attempts || []).map((a) => el("tr", null,
      el("td", null, when(a.at)),
      el("td", { className: "addr" }, a.recipient || ""),
      el("td", { className: "mono" }, a.host || "—"),
      el("td", null, tlsText(a.tls)),
      el("td", null, reply(a.plain, a.reply)))) : el("tr", null, el("td", { colSpan: 5, className: "empty" }, "No attempt yet."))));

  return el("section", { className: "entry" },
    el("p", null, el("a", { href: "#/queue" }, "← Queue")),
    el("h1", null, "Queue entry ", el("span", { className: "mono", id: "entry-id" }, e.id)),
    actions, result,
    el("h2", null, "Envelope"), envelope,
    el("h2", null, "Recipients"), rcpts,
    el("h2", null, "Timeline"), timeline,
    el("h2", null, "Attempts"), attempts,
    el("h2", null, "Headers"), el("pre", { className: "headers", id: "headers" }, e.headers || ""));
}

function fact(name, ...value) {
  return [el("dt", null, name), el("dd", null, ...value)];
}

/** `spf=pass dkim=fail` for an object of results; a string as it is. */
function pairs(v) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "object") return String(v);
  if (Array.isArray(v)) return v.map(pairs).join(", ");
  return Object.entries(v).filter(([, x]) => x !== null && x !== undefined)
    .map(([k, x]) => k + "=" + (typeof x === "object" ? pairs(x) : String(x))).join(" ");
}

function tlsText(tls) {
  if (!tls) return "—";
  if (typeof tls === "string") return tls;
  if (tls.mode === "cleartext") return "none (cleartext)";
  if (tls.mode === "tls" || tls.version) return (tls.version || "TLS").replace("_", ".").replace("TLSv", "TLS ") + (tls.verified ? ", verified" : ", unverified");
  return JSON.stringify(tls);
}

/** The details of a timeline event: host, TLS, the reply in plain words and raw, the DSN. */
function detailLine(t) {
  const bits = [];
  if (t.recipient) bits.push(el("span", null, "to ", el("span", { className: "addr" }, t.recipient)));
  if (t.host) bits.push(el("span", null, "host ", el("span", { className: "mono" }, t.host)));
  if (t.event === "received") {
    if (t.helo || t.client_ip) bits.push(el("span", null, "client ", el("span", { className: "mono" }, (t.helo || "") + (t.client_ip ? " [" + t.client_ip + "]" : ""))));
    if (t.listener) bits.push(el("span", null, "listener " + t.listener));
    bits.push(el("span", null, "TLS: " + (t.tls ? tlsText(t.tls) : "none")));
    bits.push(el("span", null, "auth: " + (t.auth ? pairs(t.auth) : "none")));
    if (t.checks) bits.push(el("span", null, "checks: " + pairs(t.checks)));
  } else if (t.tls) {
    bits.push(el("span", null, "TLS: " + tlsText(t.tls)));
  }
  if (t.dsn_id) bits.push(el("span", null, "bounce (DSN) ", el("a", { href: "#/queue/" + enc(t.dsn_id), className: "mono" }, shortId(t.dsn_id))));
  const box = el("div", { className: "ev-details" });
  if (bits.length) box.append(el("div", { className: "ev-bits" }, bits));
  // The event's sentence often quotes the reply already: then only its plain words are added.
  if (t.reply && (t.text || "").includes(t.reply)) {
    if (t.plain) box.append(el("div", { className: "reply" }, el("span", { className: "plain" }, t.plain)));
  } else if (t.reply || t.plain) {
    box.append(reply(t.plain, t.reply));
  }
  return box.childNodes.length ? box : null;
}

async function entryAction(id, action, result) {
  const verb = action[0].toUpperCase() + action.slice(1);
  if (!confirm(verb + " entry " + shortId(id) + "? (" + ACTION_HELP[action] + ")")) return;
  result.className = "result";
  try {
    const r = action === "delete"
      ? await api("/api/queue/" + enc(id), { method: "DELETE" })
      : await api("/api/queue/" + enc(id) + "/" + action, { method: "POST" });
    result.textContent = r.message || (action + ": " + r.result);
    result.classList.add("ok");
    if (action === "delete" || action === "bounce") {
      result.append(" ", el("a", { href: "#/queue" }, "Back to the queue"));
      for (const b of document.querySelectorAll("[data-action]")) b.disabled = true;
      return;
    }
    // Show the new state (and the timeline line the action wrote) under the message.
    const msg = result.textContent;
    await render();
    const again = document.getElementById("action-result");
    if (again) {
      again.textContent = msg;
      again.classList.add("ok");
    }
  } catch (e) {
    if (e instanceof AuthNeeded) return login.show(e.status, e.message);
    result.textContent = verb + " failed: " + e.message;
    result.classList.add("error");
  }
}

// ------------------------------------------------------------------ mailboxes

async function mailboxesView() {
  const data = await api("/api/mailboxes");
  const boxes = data.mailboxes || [];
  const body = el("tbody", null, boxes.length ? boxes.map((m) => {
    const href = "#/mail/" + enc(m.address);
    return el("tr", { className: "clickable", on: { click: (ev) => { if (!ev.target.closest("a")) location.hash = href; } } },
      el("td", { className: "addr" }, el("a", { href }, m.address)),
      el("td", null, String(m.messages)),
      el("td", null, m.unseen ? el("strong", null, String(m.unseen)) : "0"),
      el("td", null, String(m.junk)),
      el("td", null, bytes(m.size)));
  }) : el("tr", null, el("td", { colSpan: 5, className: "empty" }, "No local mailbox has mail yet.")));
  return el("section", null, el("h1", null, "Local mailboxes"),
    el("table", { id: "mailboxes" }, el("thead", null, el("tr", null,
      ["Address", "Messages", "Unread", "Junk", "Size"].map((h) => el("th", null, h)))), body));
}

async function messagesView(addr, params) {
  const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const page = await api("/api/mailboxes/" + enc(addr) + "/messages?offset=" + offset + "&limit=" + PAGE);
  const msgs = page.messages || [];
  const body = el("tbody", null, msgs.length ? msgs.map((m) => {
    const href = "#/mail/" + enc(addr) + "/" + enc(m.id);
    return el("tr", { className: "clickable" + (m.seen ? "" : " unseen"), dataset: { id: m.id },
      on: { click: (ev) => { if (!ev.target.closest("a")) location.hash = href; } } },
      el("td", null, m.folder === "INBOX" ? "" : badge(m.folder, m.folder === "Junk" ? "junk" : "folder")),
      el("td", { className: "addr" }, m.from),
      el("td", { className: "subject" }, el("a", { href }, m.subject || "(no subject)")),
      el("td", { title: when(m.date) }, relative(m.date)),
      el("td", null, bytes(m.size)));
  }) : el("tr", null, el("td", { colSpan: 5, className: "empty" }, "No messages.")));
  const pager = el("p", { className: "pager" },
    offset > 0 ? el("a", { href: "#/mail/" + enc(addr) + "?offset=" + Math.max(0, offset - PAGE) }, "← Newer") : null, " ",
    el("span", { className: "muted" }, page.total ? (offset + 1) + "–" + (offset + msgs.length) + " of " + page.total : ""), " ",
    offset + msgs.length < page.total ? el("a", { href: "#/mail/" + enc(addr) + "?offset=" + (offset + PAGE) }, "Older →") : null);
  return el("section", null,
    el("p", null, el("a", { href: "#/mail" }, "← Mailboxes")),
    el("h1", null, el("span", { className: "addr" }, page.address || addr)),
    el("table", { id: "messages" }, el("thead", null, el("tr", null,
      ["", "From", "Subject", "Date", "Size"].map((h) => el("th", null, h)))), body),
    pager);
}

async function messageView(addr, id) {
  const m = await api("/api/mailboxes/" + enc(addr) + "/messages/" + enc(id));
  const rawPath = "/api/mailboxes/" + enc(addr) + "/messages/" + enc(id) + "/raw";
  const raw = el("a", { href: rawPath, id: "raw-link", className: "button", download: "message.eml",
    on: { click: (ev) => { ev.preventDefault(); downloadRaw(rawPath, ev.currentTarget); } } }, "Download raw (.eml)");
  const parts = [];
  if (m.truncated) parts.push(el("p", { className: "notice" }, "This message is long: its body is cut here. Download it raw for all of it."));
  if (m.html) {
    // sandbox="" : no scripts, no forms, no popups, no top navigation, an opaque origin.
    const frame = el("iframe", { id: "html-body", title: "HTML body (sandboxed)", referrerPolicy: "no-referrer" });
    frame.setAttribute("sandbox", "");
    frame.srcdoc = m.html;
    parts.push(el("h2", null, "HTML ", el("span", { className: "muted small" }, "(sandboxed: no scripts, no remote content)")), frame);
  }
  if (m.text) parts.push(el("h2", null, "Text"), el("pre", { className: "body", id: "text-body" }, m.text));
  if (!m.html && !m.text) parts.push(el("p", { className: "muted" }, "This message has no text body."));
  if ((m.attachments || []).length) {
    parts.push(el("h2", null, "Attachments"), el("ul", { className: "attachments", id: "attachments" },
      m.attachments.map((a) => el("li", null, el("span", { className: "mono" }, a.name), " ",
        el("span", { className: "muted" }, a.content_type + ", " + bytes(a.size))))));
  }
  const headers = el("details", null, el("summary", null, "All headers (" + (m.headers || []).length + ")"),
    el("table", { className: "headers-table" }, el("tbody", null, (m.headers || []).map(([n, v]) =>
      el("tr", null, el("th", null, n), el("td", null, v))))));
  return el("section", { className: "message" },
    el("p", null, el("a", { href: "#/mail/" + enc(addr) }, "← " + addr)),
    el("h1", { id: "message-subject" }, m.subject || "(no subject)"),
    el("dl", { className: "facts" },
      fact("From", m.from || "—"), fact("To", m.to || "—"), m.cc ? fact("Cc", m.cc) : null,
      fact("Date", when(m.date)), fact("Folder", m.folder), fact("Size", bytes(m.size))),
    el("p", null, raw), headers, parts);
}

/** The raw download needs the token, so it is fetched and handed to the browser as a blob. */
async function downloadRaw(path, link) {
  try {
    const res = await api(path, { raw: true });
    const blob = await res.blob();
    const url = URL.createObjectURL(new Blob([blob], { type: "message/rfc822" }));
    const a = el("a", { href: url, download: "message.eml", className: "hidden" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    if (e instanceof AuthNeeded) return login.show(e.status, e.message);
    link.after(el("span", { className: "error" }, " " + e.message));
  }
}

// ------------------------------------------------------------------ start

setupLogin();
window.addEventListener("hashchange", render);
document.addEventListener("visibilitychange", () => {
  // Refresh at once when the tab comes back, rather than showing stale ages.
  if (!document.hidden && refreshTimer) render();
});
if (!location.hash) history.replaceState(null, "", "#/queue");
render();
