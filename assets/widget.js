/*! relaybot web chat widget. Embed with
 *    <script src="https://bot.example.com/widget.js" data-title="Chat with us"></script>
 *  Options (attributes of that script tag):
 *    data-title     the panel's title (default "Chat with us")
 *    data-open      "true" to start with the panel open
 *    data-greeting  text shown in the empty conversation (default "Hi! How can we help you today?")
 *  The host page may set `--relaybot-accent` on `#relaybot-widget` to change the accent colour.
 *
 *  It talks to relaybot over a WebSocket at <script's folder>/chat/ws; the protocol is
 *  documented in src/web/protocol.rs. Everything lives in an open shadow root attached to
 *  `<div id="relaybot-widget">`, so the host page's CSS and ours never meet. Message text is
 *  only ever inserted with textContent. No dependencies, no build step.
 */
(() => {
  'use strict';

  // ---- Configuration, read from our own <script> tag ---------------------------------------
  // currentScript is only set while this file first runs, so read it now. The fallback covers
  // unusual loaders; the last resort is the page's own address.
  const script = document.currentScript ||
    Array.from(document.scripts).reverse().find((s) => /\/widget\.js([?#]|$)/.test(s.src));
  if (document.getElementById('relaybot-widget')) return; // the script was included twice

  const base = new URL(script && script.src ? script.src : 'widget.js', location.href);
  const attr = (name) => ((script && script.getAttribute(name)) || '').trim();
  const TITLE = attr('data-title') || 'Chat with us';
  const START_OPEN = attr('data-open') === 'true';
  const GREETING = attr('data-greeting') || 'Hi! How can we help you today?';
  const CSS_URL = new URL('widget.css', base).href;
  const TOKEN_KEY = 'relaybot-token';
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 10000;
  const PHASES = ['bot', 'escalating', 'live', 'closed'];
  const FROMS = ['visitor', 'bot', 'agent', 'notice'];
  const PLACEHOLDER = 'Type a message\u2026';
  // This file is kept ASCII (non-ASCII text as \u escapes): a host page without a charset
  // must not turn an ellipsis into mojibake.

  /** The WebSocket URL: `ws(s)://<the script's host>/chat/ws`, with `?token=` to resume. */
  function socketUrl(token) {
    const url = new URL('chat/ws', base);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    if (token) url.searchParams.set('token', token);
    return url.href;
  }

  // sessionStorage can throw (sandboxed frames, privacy modes): then a reload starts over.
  const tokenStore = {
    get() { try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; } },
    set(t) { try { sessionStorage.setItem(TOKEN_KEY, t); } catch (_) { /* not kept */ } },
    forget() { try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ } },
  };

  // ---- State -------------------------------------------------------------------------------
  let phase = 'bot';        // the conversation's phase, as the server last said
  let agentName = '';       // the live agent's friendly name, when known
  let ws = null;            // the current socket (null while disconnected)
  let ready = false;        // the current socket has sent `session` and `history`
  let started = false;      // we have tried to connect at least once
  let closed = false;       // the chat is over: no reconnects, input disabled
  let ending = false;       // "End chat" went out: the socket closing means the chat is over
  let backoff = BACKOFF_MIN;
  let retryTimer = 0;
  let errorTimer = 0;
  let isOpen = false;
  let unread = 0;
  const queue = [];         // client frames waiting for a connection, in order
  const lines = new Map();  // line id -> { line, el }

  // ---- DOM -----------------------------------------------------------------------------------
  // The skeleton is constant markup; every piece of text that varies is set with textContent
  // or setAttribute below.
  const host = document.createElement('div');
  host.id = 'relaybot-widget';
  // The host element lives in the page's DOM, where the page's CSS reaches it: reset it inline
  // (`all` leaves custom properties alone, so `--relaybot-accent` still comes through). It stays
  // hidden until our stylesheet has loaded: no flash of an unstyled widget.
  const hostStyle = (display) => `all: initial !important; display: ${display} !important;`;
  host.style.cssText = hostStyle('none');
  const root = host.attachShadow({ mode: 'open' });
  root.innerHTML = `
<link rel="stylesheet">
<button id="relaybot-launcher" class="relaybot-launcher" type="button" aria-label="Open chat"
        aria-expanded="false" aria-controls="relaybot-panel" aria-describedby="relaybot-unread-sr">
  <svg class="relaybot-icon relaybot-icon-chat" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
    <path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"/>
  </svg>
  <svg class="relaybot-icon relaybot-icon-down" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
    <path d="M6 9l6 6 6-6"/>
  </svg>
  <span id="relaybot-unread" class="relaybot-badge" aria-hidden="true" hidden></span>
</button>
<span id="relaybot-unread-sr" class="relaybot-sr"></span>
<section id="relaybot-panel" class="relaybot-panel" role="dialog" hidden>
  <header class="relaybot-header">
    <div class="relaybot-heading">
      <h2 id="relaybot-title" class="relaybot-title"></h2>
      <p id="relaybot-status" class="relaybot-status" role="status" aria-live="polite" data-phase="bot"></p>
    </div>
    <button id="relaybot-end" class="relaybot-end" type="button">End chat</button>
    <button id="relaybot-close" class="relaybot-close" type="button" aria-label="Minimise chat">
      <svg class="relaybot-icon" viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M5 12h14"/></svg>
    </button>
  </header>
  <div id="relaybot-scroll" class="relaybot-scroll">
    <p id="relaybot-empty" class="relaybot-empty"></p>
    <div id="relaybot-messages" class="relaybot-messages" role="log" aria-live="polite" aria-label="Messages"></div>
    <div id="relaybot-typing" class="relaybot-typing" hidden>
      <span class="relaybot-dots" aria-hidden="true"><span></span><span></span><span></span></span>
      <span class="relaybot-sr">Assistant is typing</span>
    </div>
  </div>
  <div id="relaybot-error" class="relaybot-error" role="alert" hidden></div>
  <div class="relaybot-restart-row"><button id="relaybot-restart" class="relaybot-restart" type="button" hidden>Start a new chat</button></div>
  <form id="relaybot-form" class="relaybot-form">
    <label class="relaybot-sr" for="relaybot-input">Message</label>
    <textarea id="relaybot-input" class="relaybot-input" rows="1" 
              autocomplete="off" enterkeyhint="send"></textarea>
    <button id="relaybot-send" class="relaybot-send" type="submit">Send</button>
  </form>
</section>`;
  const $ = (id) => root.getElementById(id);
  const stylesheet = root.querySelector('link');
  const launcher = $('relaybot-launcher');
  const badge = $('relaybot-unread');
  const unreadSr = $('relaybot-unread-sr');
  const panel = $('relaybot-panel');
  const status = $('relaybot-status');
  const endBtn = $('relaybot-end');
  const closeBtn = $('relaybot-close');
  const scroller = $('relaybot-scroll');
  const empty = $('relaybot-empty');
  const list = $('relaybot-messages');
  const typing = $('relaybot-typing');
  const errorBox = $('relaybot-error');
  const restartBtn = $('relaybot-restart');
  const form = $('relaybot-form');
  const input = $('relaybot-input');
  const sendBtn = $('relaybot-send');

  $('relaybot-title').textContent = TITLE;
  panel.setAttribute('aria-label', TITLE);
  empty.textContent = GREETING;
  input.placeholder = PLACEHOLDER;

  // ---- Rendering -----------------------------------------------------------------------------
  const nearBottom = () => scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  const scrollToBottom = () => { scroller.scrollTop = scroller.scrollHeight; };

  /** Runs `change`, then keeps the view pinned to the newest message if it was there (or `force`). */
  function keepScrolled(change, force) {
    const pinned = force || nearBottom();
    change();
    if (pinned) scrollToBottom();
  }

  /** A line from the server, checked and normalised (never trusted as markup). */
  function clean(raw) {
    if (!raw || typeof raw !== 'object' || !Number.isFinite(Number(raw.id))) return null;
    return {
      id: Number(raw.id),
      from: FROMS.includes(raw.from) ? raw.from : 'notice',
      name: typeof raw.name === 'string' ? raw.name : '',
      text: raw.text == null ? '' : String(raw.text),
      at: Number(raw.at) || Date.now(),
    };
  }

  /** Fills a message element: (agent name | screen-reader label) + `.relaybot-text`. */
  function fill(el, line) {
    el.className = `relaybot-line relaybot-from-${line.from}`;
    el.dataset.from = line.from;
    el.dataset.id = String(line.id);
    const parts = [];
    if (line.from === 'agent') {
      const name = document.createElement('div');
      name.className = 'relaybot-name';
      name.textContent = line.name || 'Agent';
      parts.push(name);
    } else if (line.from !== 'notice') {
      const who = document.createElement('span');
      who.className = 'relaybot-sr';
      who.textContent = line.from === 'visitor' ? 'You said: ' : 'Assistant said: ';
      parts.push(who);
    }
    const text = document.createElement('div');
    text.className = 'relaybot-text';
    text.textContent = line.text;
    text.title = new Date(line.at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    parts.push(text);
    el.replaceChildren(...parts);
  }

  /** Inserts a message element in id order (nearly always at the end). */
  function insertOrdered(el, id) {
    let before = list.lastElementChild;
    while (before && Number(before.dataset.id) > id) before = before.previousElementSibling;
    list.insertBefore(el, before ? before.nextSibling : list.firstChild);
  }

  /** Creates line `line.id`, or replaces what it shows. `live`: it arrived now (may be unread). */
  function upsert(line, live) {
    let entry = lines.get(line.id);
    if (entry) {
      entry.line = line;
      fill(entry.el, line);
    } else {
      const el = document.createElement('div');
      fill(el, line);
      entry = { line, el };
      lines.set(line.id, entry);
      insertOrdered(el, line.id);
      if (live && line.from !== 'visitor') bumpUnread();
    }
    entry.el.removeAttribute('aria-busy'); // a finished line: screen readers may read it now
    empty.hidden = true;
    return entry;
  }

  function clearLines() {
    lines.clear();
    list.replaceChildren();
    empty.hidden = false;
  }

  function setTyping(on) {
    keepScrolled(() => { typing.hidden = !on; });
  }

  function showError(message) {
    errorBox.textContent = message || 'Something went wrong.';
    errorBox.hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => { errorBox.hidden = true; }, 8000);
  }

  function bumpUnread() {
    if (isOpen) return;
    unread += 1;
    badge.textContent = unread > 9 ? '9+' : String(unread);
    badge.hidden = false;
    unreadSr.textContent = `${unread} unread message${unread === 1 ? '' : 's'}`;
  }

  function clearUnread() {
    unread = 0;
    badge.hidden = true;
    unreadSr.textContent = '';
  }

  /** The status line under the title; `data-phase` is the phase, `data-connected` the link. */
  function renderStatus() {
    let text = {
      bot: 'Chatting with our assistant',
      escalating: 'Connecting you to an agent\u2026',
      live: agentName ? `You're chatting with ${agentName}` : "You're chatting with an agent",
      closed: 'This chat has ended',
    }[phase];
    if (!closed && started && !ready) {
      const waiting = queue.filter((f) => f.type === 'message').length;
      text = lines.size || waiting ? 'Reconnecting\u2026' : 'Connecting\u2026';
      if (waiting) text += ` (${waiting} message${waiting === 1 ? '' : 's'} waiting to send)`;
    }
    status.textContent = text;
    status.dataset.phase = phase;
    status.dataset.connected = String(ready);
  }

  function renderControls() {
    // Showing or hiding the "Start a new chat" row changes the list's height: keep the newest
    // line (the "chat has ended" notice) in view.
    keepScrolled(() => {
      input.disabled = closed;
      sendBtn.disabled = closed;
      endBtn.disabled = closed;
      restartBtn.hidden = !closed;
      input.placeholder = closed ? 'This chat has ended' : PLACEHOLDER;
    }, closed);
  }

  // ---- Protocol: server -> widget --------------------------------------------------------------
  /** A new phase. `closed` ends the chat for good: no reconnects, and the token is forgotten. */
  function setPhase(next, agent) {
    if (!PHASES.includes(next)) return;
    phase = next;
    if (typeof agent === 'string' && agent) agentName = agent;
    if (next === 'bot') agentName = ''; // back to the bot (an escalation that found no one)
    if (next === 'closed' && !closed) {
      closed = true;
      queue.length = 0;
      tokenStore.forget();
      clearTimeout(retryTimer);
      setTyping(false);
    }
    renderStatus();
    renderControls();
  }

  /** One frame from the server (a JSON object tagged by `type`; see src/web/protocol.rs). */
  function onFrame(data) {
    let frame;
    try { frame = JSON.parse(data); } catch (_) { return; }
    if (!frame || typeof frame !== 'object') return;
    switch (frame.type) {
      case 'session': // first frame: who we are; keep the token so a reload resumes the chat
        if (typeof frame.token === 'string' && frame.token) tokenStore.set(frame.token);
        backoff = BACKOFF_MIN;
        setPhase(frame.phase);
        break;
      case 'history': { // everything so far: it replaces whatever is shown
        keepScrolled(() => {
          clearLines();
          for (const raw of Array.isArray(frame.messages) ? frame.messages : []) {
            const line = clean(raw);
            if (line) upsert(line, false);
          }
        }, true);
        // Resumed in the live phase: name the agent from their last line.
        if (phase === 'live' && !agentName) {
          const last = [...lines.values()].reverse().find((e) => e.line.from === 'agent' && e.line.name);
          if (last) agentName = last.line.name;
        }
        ready = true; // the chat is in sync: send what the visitor typed meanwhile, in order
        flush();
        renderStatus();
        break;
      }
      case 'typing': // the bot is (or stopped) working on a reply
        setTyping(Boolean(frame.on));
        break;
      case 'delta': { // a piece of a bot line as it streams: append it, creating the line
        const id = Number(frame.id);
        if (!Number.isFinite(id) || typeof frame.text !== 'string') break;
        keepScrolled(() => {
          typing.hidden = true; // the words themselves show that the bot is answering
          let entry = lines.get(id);
          if (!entry) {
            entry = upsert({ id, from: 'bot', name: '', text: '', at: Date.now() }, true);
            entry.el.setAttribute('aria-busy', 'true'); // read it once finished, not per piece
          }
          entry.line.text += frame.text;
          entry.el.querySelector('.relaybot-text').textContent = entry.line.text;
        });
        break;
      }
      case 'line': { // a finished line (a bot answer, the visitor's echo, an agent, a notice)
        const line = clean(frame.line);
        if (line) keepScrolled(() => upsert(line, true), line.from === 'visitor');
        break;
      }
      case 'phase': // bot -> escalating -> live -> closed (or back to bot)
        setPhase(frame.phase, frame.agent);
        break;
      case 'error': // the server could not read a frame of ours; the chat goes on
        showError(typeof frame.message === 'string' ? frame.message : '');
        break;
      default: // a frame type this widget does not know: ignore it
    }
  }

  // ---- Protocol: widget -> server and the connection ---------------------------------------------
  /** Sends a client frame now if the chat is in sync, or queues it for the next connection. */
  function send(frame) {
    if (ready && ws && ws.readyState === WebSocket.OPEN) transmit(frame);
    else queue.push(frame);
    renderStatus();
  }

  function transmit(frame) {
    ws.send(JSON.stringify(frame));
    if (frame.type === 'end') ending = true;
  }

  function flush() {
    while (queue.length && ws && ws.readyState === WebSocket.OPEN) transmit(queue.shift());
  }

  /** Opens the socket (with the stored token, to resume), unless one is open or the chat is over. */
  function connect() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    if (closed || (ws && ws.readyState <= WebSocket.OPEN)) return;
    started = true;
    ready = false;
    let sock;
    try {
      sock = new WebSocket(socketUrl(tokenStore.get()));
    } catch (_) {
      retry();
      return;
    }
    ws = sock;
    sock.onmessage = (ev) => { if (ws === sock) onFrame(ev.data); };
    sock.onclose = () => {
      if (ws !== sock) return; // a socket we already replaced
      ws = null;
      ready = false;
      setTyping(false);
      if (ending && !closed) setPhase('closed'); // we ended it; the server hung up
      else if (!closed) retry();
      renderStatus();
    };
    renderStatus();
  }

  /** Reconnects after a pause that doubles each time (0.5 s, 1 s, 2 s ... 10 s at most). */
  function retry() {
    if (closed || retryTimer) return;
    const delay = backoff;
    backoff = Math.min(backoff * 2, BACKOFF_MAX);
    retryTimer = setTimeout(connect, delay);
  }

  /** "Start a new chat" after one ended: a fresh visitor, without the old token. */
  function restart() {
    const old = ws;
    ws = null;
    if (old) old.close(1000);
    closed = false;
    ending = false;
    ready = false;
    agentName = '';
    backoff = BACKOFF_MIN;
    clearLines();
    setPhase('bot');
    connect();
    input.focus();
  }

  // ---- Opening, closing and input -------------------------------------------------------------
  function setOpen(open) {
    if (open === isOpen) return;
    isOpen = open;
    panel.hidden = !open;
    launcher.setAttribute('aria-expanded', String(open));
    if (open) {
      clearUnread();
      if (!started) connect(); // connect lazily: a visitor who never opens the chat costs nothing
      scrollToBottom();
      (closed ? restartBtn : input).focus();
    } else {
      launcher.focus();
    }
  }

  launcher.addEventListener('click', () => setOpen(!isOpen));
  closeBtn.addEventListener('click', () => setOpen(false));
  endBtn.addEventListener('click', () => { if (!closed) send({ type: 'end' }); });
  restartBtn.addEventListener('click', restart);
  panel.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      e.stopPropagation();
      setOpen(false);
    }
  });

  /** The textarea grows with its text, up to a few lines. */
  function autosize() {
    input.style.height = 'auto';
    const borders = input.offsetHeight - input.clientHeight;
    const height = input.scrollHeight + borders;
    input.style.height = `${Math.min(height, 120)}px`;
    input.style.overflowY = height > 120 ? 'auto' : 'hidden';
  }
  input.addEventListener('input', autosize);
  input.addEventListener('keydown', (e) => {
    // Enter sends, Shift+Enter is a new line; never while an input method is composing.
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || closed) return;
    // Not shown yet: the server echoes it at once as a `visitor` line, in order.
    send({ type: 'message', text });
    input.value = '';
    autosize();
    input.focus();
  });
  // Back online: try now rather than at the end of the backoff.
  window.addEventListener('online', () => { if (started && !ws && !closed) connect(); });

  // ---- Start -----------------------------------------------------------------------------------
  window.relaybotWidget = {
    /** What the widget holds, for debugging and tests. */
    state: () => ({
      phase,
      connected: ready,
      lines: [...lines.values()].map((e) => ({ ...e.line })).sort((a, b) => a.id - b.id),
    }),
    open: () => setOpen(true),
    close: () => setOpen(false),
  };

  renderStatus();
  renderControls();

  function mount() {
    let shown = false;
    const show = () => {
      if (shown) return;
      shown = true;
      host.style.cssText = hostStyle('contents');
      if (START_OPEN) setOpen(true);
    };
    stylesheet.addEventListener('load', show);
    stylesheet.addEventListener('error', show);
    setTimeout(show, 3000); // never stay invisible, whatever happened to the stylesheet
    stylesheet.href = CSS_URL;
    document.body.appendChild(host);
    // A conversation to resume (a reload): reconnect now so its messages keep arriving.
    if (tokenStore.get()) connect();
  }

  if (document.body) mount();
  else document.addEventListener('DOMContentLoaded', mount);
})();
