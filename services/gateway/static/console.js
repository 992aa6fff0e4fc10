// The llmflow console: one token (sessionStorage, sent as an Authorization header), a
// snapshot stream read with fetch() (EventSource cannot send headers), and a few JSON calls.
// Every value is put in the page as text, never as HTML.

const TOKEN_KEY = "llmflow.console.token";
const $ = (selector) => document.querySelector(selector);

let grant = { tenant: null, replay: false };
let streaming = null;
let searching = "";
let latest = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

function num(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en", {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "–";
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${token()}` },
  });
  if (response.status === 401) throw new Unauthorized("the gateway does not know this token");
  return response;
}

function showLogin(message = "") {
  if (streaming) streaming.abort();
  streaming = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("#console").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#token").value = "";
  $("#token").focus();
}

function notice(text, bad = false) {
  const node = $("#notice");
  node.textContent = text;
  node.className = bad ? "bad" : "";
}

// --- the snapshot stream -------------------------------------------------------------------

async function follow() {
  const controller = new AbortController();
  streaming = controller;
  while (streaming === controller) {
    try {
      const response = await api("/v1/console/stream", { signal: controller.signal });
      if (!response.ok) throw new Error(`stream: HTTP ${response.status}`);
      $("#live").textContent = "live";
      $("#live").className = "on";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: "))
            .map((l) => l.slice(6)).join("\n");
          if (data) render(JSON.parse(data));
        }
      }
    } catch (error) {
      if (error instanceof Unauthorized) return showLogin(error.message);
      if (controller.signal.aborted) return;
    }
    $("#live").textContent = "reconnecting";
    $("#live").className = "off";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function render(snapshot) {
  latest = snapshot;
  grant = snapshot.grant;
  $("#who").textContent = `tenant ${grant.tenant ?? "(every tenant: open gateway)"}` +
    (grant.replay ? " · may replay" : " · read-only");
  renderFlow(snapshot.flow);
  renderDeadLetters(snapshot.dead_letters);
  if (!searching) renderOutputs(snapshot.outputs);
}

// --- flow ----------------------------------------------------------------------------------

function sparkline(history) {
  const width = 300;
  const height = 48;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark");
  if (!history || history.length < 2) return svg;
  const top = Math.max(1, ...history.flatMap((h) => [h.events_in, h.outputs, h.dead_letters]));
  for (const [name, cls] of [["events_in", "in"], ["outputs", "out"], ["dead_letters", "dead"]]) {
    const points = history.map((h, i) =>
      `${(i / (history.length - 1)) * width},${height - 2 - (h[name] / top) * (height - 4)}`);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke-width", "1.5");
    line.setAttribute("class", cls);
    svg.append(line);
  }
  return svg;
}

function stat(label, value, name) {
  return el("div", { class: "stat" }, el("b", { "data-stat": name }, value), el("span", {}, label));
}

function renderFlow(flow) {
  const cards = flow.map((t) => {
    const rates = t.rates || {};
    const window = t.window || {};
    const latency = t.latency_ms || {};
    const partitions = el("table", { class: "partitions" },
      el("thead", {}, el("tr", {}, el("th", {}, "partition"), el("th", { class: "num" }, "end"),
        el("th", { class: "num" }, "committed"), el("th", { class: "num" }, "lag"))),
      el("tbody", {}, ...(t.partitions || []).map((p) => el("tr", {},
        el("td", {}, p.partition), el("td", { class: "num" }, num(p.end)),
        el("td", { class: "num" }, num(p.committed)), el("td", { class: "num" }, num(p.lag))))));
    return el("div", { class: "card", "data-topology": t.topology },
      el("h3", {}, `${t.topology} `, el("small", {}, `v${t.version} · ${t.input_topic}`)),
      el("div", { class: "stats" },
        stat("events in/s", num(rates.events_in, 1), "events_in_rate"),
        stat("outputs/s", num(rates.outputs, 1), "outputs_rate"),
        stat("dead letters/s", num(rates.dead_letters, 1), "dead_letters_rate"),
        stat("parked/s", num(rates.parked, 1), "parked_rate"),
        stat(`events in, last ${num(window.seconds)} s`, num(window.events_in), "events_in"),
        stat(`outputs, last ${num(window.seconds)} s`, num(window.outputs), "outputs"),
        stat(`dead letters, last ${num(window.seconds)} s`, num(window.dead_letters), "dead_letters"),
        stat(`parked, last ${num(window.seconds)} s`, num(window.parked), "parked"),
        stat("in flight (lag)", num(t.in_flight), "in_flight"),
        stat("latency p50 ms", num(latency.p50), "p50"),
        stat("latency p95 ms", num(latency.p95), "p95"),
        stat("outputs measured", num(latency.outputs), "latency_outputs")),
      sparkline(t.history),
      partitions);
  });
  $("#flow").replaceChildren(...cards);
}

// --- dead letters and replay ---------------------------------------------------------------

function place(row) {
  return `${row.topic}/${row.partition}/${row.offset}`;
}

async function replay(row, again = false) {
  const question = again
    ? `Event ${row.event_id ?? "(no id)"} was ${again}. Replay it once more?`
    : `Replay event ${row.event_id ?? "(no id)"} (dead letter ${place(row)}, ` +
      `${row.stage}: ${row.error_kind}) to the input topic of ${row.topology}?`;
  if (!window.confirm(question)) return;
  try {
    const url = `/v1/console/dead-letters/${encodeURIComponent(row.topic)}/${row.partition}/` +
      `${row.offset}/replay` + (again ? "?again=true" : "");
    const response = await api(url, { method: "POST" });
    const body = await response.json();
    if (body.error === "already_replayed" && !again) {
      return replay(row, `replayed at ${body.replayed.at}`);
    }
    if (response.status !== 202) return notice(`Replay refused: ${body.message}`, true);
    const to = body.replayed.republished;
    notice(`Replayed ${row.event_id} to ${to.topic} partition ${to.partition} offset ` +
      `${to.offset}; recorded in ${body.audit_topic}.`);
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin(error.message);
    notice(`Replay failed: ${error.message}`, true);
  }
}

let shownDeadLetters = "";

function renderDeadLetters(rows) {
  const shown = rows.map(place).join(",") + String(grant.replay);
  if (shown === shownDeadLetters) return;
  shownDeadLetters = shown;
  $("#dead-letters tbody").replaceChildren(...rows.map((row) => el("tr",
    { "data-event-id": row.event_id ?? "", "data-place": place(row) },
    el("td", {}, time(row.failed_at)), el("td", {}, row.topology), el("td", {}, row.event_id),
    el("td", {}, row.stage), el("td", {}, row.error_kind), el("td", {}, row.message),
    el("td", {}, row.replayable && grant.replay
      ? el("button", { type: "button", class: "replay", onclick: () => replay(row) }, "Replay")
      : ""))));
}

// --- outputs and lineage -------------------------------------------------------------------

function lineage(row) {
  const calls = el("table", {},
    el("thead", {}, el("tr", {}, ...["call", "model", "prompt version", "tokens in", "tokens out",
      "cost $", "latency ms"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...row.calls.map((c) => el("tr", {},
      el("td", {}, c.name), el("td", {}, c.model), el("td", {}, c.prompt_version),
      el("td", { class: "num" }, num(c.tokens_in)), el("td", { class: "num" }, num(c.tokens_out)),
      el("td", { class: "num" }, num(c.cost_usd, 6)), el("td", { class: "num" }, num(c.latency_ms))))));
  const org = row.org_record
    ? `${row.org_record.table}/${row.org_record.key} version ${row.org_record.version ?? "–"}`
    : "none";
  const passages = row.retrieval
    ? row.retrieval.passages.map((p) => `${p.key}#${p.n} v${p.version} (${num(p.score, 3)})`)
      .join(", ") || "none found"
    : "no retrieval";
  return el("td", { colspan: "9" },
    el("div", {}, `topology ${row.topology} version ${row.topology_version} · worker ${row.worker}` +
      ` · output at ${place(row)}`),
    el("div", {}, `org record: ${org}`),
    el("div", {}, `retrieved passages: ${passages}`),
    calls);
}

let shownOutputs = "";
const opened = new Set();  // outputs whose lineage is open, by place: kept across renders

function renderOutputs(rows) {
  const shown = rows.map(place).join(",");
  if (shown === shownOutputs) return;
  shownOutputs = shown;
  const body = [];
  for (const row of rows) {
    const totals = row.totals || {};
    const details = el("tr", { class: "lineage" }, lineage(row));
    details.hidden = !opened.has(place(row));
    body.push(el("tr", {
      "data-event-id": row.event_id ?? "", class: "output",
      onclick: () => {
        details.hidden = !details.hidden;
        if (details.hidden) opened.delete(place(row));
        else opened.add(place(row));
      },
    },
    el("td", {}, time(row.produced_at)), el("td", {}, row.event_id), el("td", {}, row.key),
    el("td", {}, row.tenant ?? "–"), el("td", {}, `${row.topology} v${row.topology_version}`),
    el("td", {}, [...new Set(row.calls.map((c) => c.model))].join(", ")),
    el("td", { class: "num" }, num((totals.tokens_in || 0) + (totals.tokens_out || 0))),
    el("td", { class: "num" }, num(totals.cost_usd, 6)),
    el("td", { class: "num" }, num(totals.latency_ms))), details);
  }
  $("#outputs tbody").replaceChildren(...body);
}

async function search() {
  searching = $("#search").value.trim();
  shownOutputs = "";
  if (!searching) {
    if (latest) renderOutputs(latest.outputs);
    return;
  }
  try {
    const response = await api(`/v1/console/outputs?q=${encodeURIComponent(searching)}`);
    const body = await response.json();
    if (searching === $("#search").value.trim()) renderOutputs(body.outputs);
  } catch (error) {
    if (error instanceof Unauthorized) showLogin(error.message);
  }
}

// --- cost ----------------------------------------------------------------------------------

async function refreshCost() {
  if (!token() || $("#console").hidden) return;
  try {
    const response = await api("/v1/console/cost");
    if (!response.ok) return;
    const cost = await response.json();
    $("#cost-since").textContent = `Over the ${num(cost.outputs)} outputs the gateway holds ` +
      `now: ${cost.since}. Older outputs are not counted.`;
    $("#cost-models tbody").replaceChildren(...cost.by_model.map((m) => el("tr", {},
      el("td", {}, m.model), el("td", { class: "num" }, num(m.calls)),
      el("td", { class: "num" }, num(m.tokens_in)), el("td", { class: "num" }, num(m.tokens_out)),
      el("td", { class: "num" }, num(m.cost_usd, 6)))));
    $("#cost-tenants tbody").replaceChildren(...cost.by_tenant.map((t) => el("tr", {},
      el("td", {}, t.tenant), el("td", { class: "num" }, num(t.outputs)),
      el("td", { class: "num" }, num(t.cost_usd, 6)))));
    $("#spend tbody").replaceChildren(...cost.spend.map((t) => el("tr", { "data-tenant": t.tenant },
      el("td", {}, t.tenant), el("td", {}, `${t.period} ${t.period_key}`),
      el("td", { class: "num", "data-stat": "spent" }, num(t.spent_usd, 6)),
      el("td", { class: "num" }, t.budget_usd === null ? "none" : num(t.budget_usd, 2)),
      el("td", { class: t.used >= 1 ? "num bad" : "num" },
        t.used === null ? "–" : `${num(t.used * 100, 1)} %`))));
  } catch (error) {
    if (error instanceof Unauthorized) showLogin(error.message);
  }
}

// --- start ---------------------------------------------------------------------------------

function open() {
  $("#login").hidden = true;
  $("#console").hidden = false;
  $("#logout").hidden = false;
  follow();
  refreshCost();
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token").value = "";
  open();
});
$("#logout").addEventListener("click", () => showLogin());
let typing = null;
$("#search").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(search, 250);
});
setInterval(refreshCost, 5000);
setInterval(() => { if (searching) search(); }, 5000);

if (token()) open();
else showLogin();
