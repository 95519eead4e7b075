// Injected into every page before its own scripts (Playwright's init
// script): wraps the browser's EventSource so that the tests can read what
// each stream the page opened went through, without changing the page.
//
// window.__sse.sources[i]: { url, withCredentials, opens, errors, state,
//   readyState, messages }, one per `new EventSource(..)`, in order;
// window.__sse.events: every event delivered to the page, in order of
// arrival: { source, type, id (lastEventId), data }.
//
// The wrapper is a subclass: connecting, reconnecting and Last-Event-ID stay
// the browser's own.
(() => {
  const Native = window.EventSource;
  if (typeof Native !== "function" || window.__sse) return;
  const rec = { sources: [], events: [] };
  window.__sse = rec;
  const ALWAYS = ["message", "ssegate.reset", "ssegate.token_expired"];

  class RecordedEventSource extends Native {
    constructor(url, init) {
      super(url, init);
      const s = {
        url: this.url,
        withCredentials: this.withCredentials,
        opens: 0,
        errors: 0,
        state: "connecting",
        readyState: this.readyState,
        messages: 0,
      };
      const index = rec.sources.push(s) - 1;
      this.__state = s;
      this.__recorded = new Set();
      this.__record = (e) => {
        s.messages += 1;
        rec.events.push({ source: index, type: e.type, id: e.lastEventId, data: e.data });
      };
      super.addEventListener("open", () => {
        s.opens += 1;
        s.state = "open";
        s.readyState = this.readyState;
      });
      super.addEventListener("error", () => {
        s.errors += 1;
        s.readyState = this.readyState;
        s.state = this.readyState === Native.CLOSED ? "closed" : "reconnecting";
      });
      for (const type of ALWAYS) this.__listen(type);
    }

    __listen(type) {
      if (type === "open" || type === "error" || this.__recorded.has(type)) return;
      this.__recorded.add(type);
      super.addEventListener(type, this.__record);
    }

    // Named events the page listens for are recorded too.
    addEventListener(type, listener, options) {
      this.__listen(String(type));
      super.addEventListener(type, listener, options);
    }

    close() {
      super.close();
      this.__state.state = "closed";
      this.__state.readyState = this.readyState;
    }
  }

  window.EventSource = RecordedEventSource;
})();
