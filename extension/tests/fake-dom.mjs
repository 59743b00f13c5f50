// Just enough of the DOM for detection.js and content-script.js to run in node: elements
// with attributes, layout boxes and natural sizes, a document that finds them, shadow roots
// (open or closed) that hold elements of their own, and observers whose callbacks the tests
// call by hand.

import fs from "node:fs";
import path from "node:path";
import vm from "node:vm";
import { fileURLToPath } from "node:url";

export const EXTENSION_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const WORDS = JSON.parse(fs.readFileSync(path.join(EXTENSION_DIR, "meaningless-alt.json"), "utf8")).words;

export class FakeElement {
  constructor(tag, attrs = {}, opts = {}) {
    this.tagName = tag.toUpperCase();
    this.nodeType = 1;
    this.attrs = new Map(Object.entries(attrs).map(([k, v]) => [k, String(v)]));
    this.parentElement = opts.parent || null;
    this.parentNode = this.parentElement;
    this.shadowRoot = null; // set by attachShadow({mode: "open"}) only, as in browsers
    this.ownerDocument = opts.doc || null;
    this.rect = opts.rect || { width: 300, height: 200 };
    this.naturalWidth = opts.natural ? opts.natural[0] : 600;
    this.naturalHeight = opts.natural ? opts.natural[1] : 400;
    this.complete = opts.complete ?? true;
    this.isConnected = opts.connected ?? true;
    this.textContent = opts.text || "";
    this.currentSrcOverride = opts.currentSrc;
    this.style = {};
  }
  getAttribute(name) {
    return this.attrs.has(name) ? this.attrs.get(name) : null;
  }
  hasAttribute(name) {
    return this.attrs.has(name);
  }
  setAttribute(name, value) {
    this.attrs.set(name, String(value));
  }
  removeAttribute(name) {
    this.attrs.delete(name);
  }
  getBoundingClientRect() {
    return { ...this.rect };
  }
  get src() {
    const s = this.getAttribute("src");
    return s ? new URL(s, "https://example.com/page.html").href : "";
  }
  get currentSrc() {
    return this.currentSrcOverride ?? this.src;
  }
  contains(other) {
    for (let n = other; n; n = n.parentElement) if (n === this) return true;
    return false;
  }
  querySelectorAll() {
    return [];
  }
  attachShadow({ mode }) {
    const root = new FakeShadowRoot(this);
    if (mode === "open") this.shadowRoot = root;
    this.anyShadowRoot = root; // what the browser hands an extension that asks for it
    return root;
  }
}

/** What the fake trees answer to the selectors the extension uses. */
function select(elements, selector) {
  if (selector === "*") return [...elements];
  const attribute = /^\[([a-z-]+)\]$/.exec(selector); // "[data-altcap]", "[data-altcap-note]"
  if (attribute) return elements.filter((e) => e.hasAttribute(attribute[1]));
  const roleImg = selector.includes('[role~="img" i]'); // the content script's SELECTOR
  return elements.filter(
    (e) =>
      e.tagName === "IMG" ||
      (e.tagName === "INPUT" && (e.getAttribute("type") || "").toLowerCase() === "image") ||
      (roleImg && (e.getAttribute("role") || "").toLowerCase().split(/\s+/).includes("img")),
  );
}

class EventTarget_ {
  addEventListener(type, fn) {
    (this.listeners[type] ||= []).push(fn);
  }
  removeEventListener(type, fn) {
    this.listeners[type] = (this.listeners[type] || []).filter((f) => f !== fn);
  }
  dispatch(type, target, extra = {}) {
    for (const fn of this.listeners[type] || []) fn({ type, target, ...extra });
  }
}

/** A shadow root: its elements are not the document's (querySelectorAll on the document
 * does not find them), as in browsers. */
export class FakeShadowRoot extends EventTarget_ {
  constructor(host) {
    super();
    this.nodeType = 11;
    this.host = host;
    this.elements = [];
    this.listeners = {};
  }
  add(el) {
    el.ownerDocument = this.host.ownerDocument;
    el.parentElement = null;
    el.parentNode = this;
    this.elements.push(el);
    return el;
  }
  querySelectorAll(selector) {
    return select(this.elements, selector);
  }
  getElementById(id) {
    return this.elements.find((e) => e.getAttribute("id") === id) || null;
  }
}

export function img(attrs = {}, opts = {}) {
  return new FakeElement("img", { src: "https://example.com/cat.jpg", ...attrs }, opts);
}

/** <div role="img"> showing `background` (a computed background-image value). */
export function ariaImage(attrs = {}, background = 'url("https://example.com/hero.jpg")', opts = {}) {
  const el = new FakeElement("div", { role: "img", ...attrs }, opts);
  el.style.backgroundImage = background;
  return el;
}

/** Load detection.js into a fresh context (as the browser does) and return the API. */
export function loadDetection(context = vm.createContext({})) {
  vm.runInContext(fs.readFileSync(path.join(EXTENSION_DIR, "detection.js"), "utf8"), context, {
    filename: "detection.js",
  });
  return context.AltCapDetection;
}

export class FakeDocument extends EventTarget_ {
  constructor() {
    super();
    this.elements = [];
    this.listeners = {};
    this.activeElement = null;
    // the computed style of the fake elements: their own `style` object, with defaults
    this.defaultView = {
      getComputedStyle: (el) => ({ backgroundImage: "none", visibility: "visible", ...el.style }),
    };
    this.documentElement = new FakeElement("html", {}, { doc: this });
    this.documentElement.querySelectorAll = (sel) => this.querySelectorAll(sel);
    this.body = new FakeElement("body", {}, { doc: this, parent: this.documentElement });
    this.body.appendChild = (el) => {
      el.parentElement = this.body;
      el.isConnected = true;
      this.elements.push(el);
    };
  }
  add(el) {
    el.ownerDocument = this;
    if (!el.parentElement) el.parentElement = el.parentNode = this.body;
    this.elements.push(el);
    return el;
  }
  querySelectorAll(selector) {
    return select(this.elements, selector);
  }
  getElementById(id) {
    return this.elements.find((e) => e.getAttribute("id") === id) || null;
  }
  createElement(tag) {
    const el = new FakeElement(tag, {}, { doc: this, connected: false });
    el.getContext = () => null; // no canvas here
    return el;
  }
}
