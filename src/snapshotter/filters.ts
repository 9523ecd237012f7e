/**
 * containerd's filter syntax (github.com/containerd/containerd/filters), as
 * clients send it in List requests, e.g.
 *   kind==committed,labels."containerd.io/gc.root"
 *   parent==sha256:abc,name~=/^k8s\.io\//
 *
 *   selectors := selector ("," selector)*
 *   selector  := fieldpath (operator value)?
 *   fieldpath := field ("." field)*
 *   field     := quoted | [A-Za-z][A-Za-z0-9_]*
 *   operator  := "==" | "!=" | "~="
 *   value     := quoted | [^\s,]+
 *   quoted    := "..." | /.../ | |...|   (Go escapes inside)
 *
 * A filter string is a conjunction of its selectors; a list of filter
 * strings is a disjunction. A selector without an operator tests presence.
 */
import v8 from "node:v8";
import { InvalidArgumentError } from "../errors.js";

/**
 * Filter regexps come from clients and run on the event loop. V8's default
 * engine backtracks (`(a+)+$` against 30 a's and a b takes minutes), so they
 * are compiled for V8's linear-time engine (flag "l"), which, like the RE2
 * engine containerd's Go regexps use, refuses what it cannot match in
 * linear time (backreferences, lookaround). The engine is behind a V8 flag,
 * set here before any regexp with "l" is compiled.
 */
v8.setFlagsFromString("--enable-experimental-regexp-engine");
try {
  new RegExp("a", "l");
} catch {
  throw new Error(`this Node.js (${process.version}) has no linear-time regexp engine; nix-snapshotter needs Node.js 20`);
}

/** Longer patterns are refused: compiling is linear in the pattern, but the automaton is not small. */
export const MAX_REGEXP_LENGTH = 1024;

type Operator = "==" | "!=" | "~=";

interface Selector {
  fieldPath: string[];
  op?: Operator;
  value?: string;
  regexp?: RegExp;
}

/** Returns the value at a field path and whether it is present. */
export type Adaptor = (fieldPath: string[]) => string | undefined;

export type Filter = (adaptor: Adaptor) => boolean;

const always: Filter = () => true;

export function parseFilters(filters: readonly string[] | undefined): Filter {
  const list = filters ?? [];
  // No filter, or an empty one among them, matches everything (containerd's
  // ParseAll is a disjunction and Parse("") is Always).
  if (list.length === 0 || list.includes("")) return always;
  const parsed = list.map(parseOne);
  return (adaptor) => parsed.some((f) => f(adaptor));
}

function parseOne(input: string): Filter {
  const selectors = new Parser(input).parse();
  return (adaptor) => selectors.every((s) => matchSelector(s, adaptor));
}

function matchSelector(s: Selector, adaptor: Adaptor): boolean {
  const value = adaptor(s.fieldPath);
  if (s.op === undefined) return value !== undefined;
  if (value === undefined) return s.op === "!=";
  switch (s.op) {
    case "==":
      return value === s.value;
    case "!=":
      return value !== s.value;
    case "~=":
      return s.regexp!.test(value);
  }
}

class Parser {
  private pos = 0;
  constructor(private readonly input: string) {}

  private fail(msg: string): never {
    throw new InvalidArgumentError(`filter ${JSON.stringify(this.input)}: ${msg} at position ${this.pos}`);
  }

  private skipSpace(): void {
    while (this.pos < this.input.length && /\s/.test(this.input[this.pos]!)) this.pos++;
  }

  private peek(): string | undefined {
    return this.input[this.pos];
  }

  parse(): Selector[] {
    const selectors: Selector[] = [];
    for (;;) {
      selectors.push(this.selector());
      this.skipSpace();
      if (this.pos >= this.input.length) return selectors;
      if (this.peek() !== ",") this.fail(`expected "," or end of filter`);
      this.pos++;
    }
  }

  private selector(): Selector {
    const fieldPath = this.fieldPath();
    this.skipSpace();
    const c = this.peek();
    if (c === undefined || c === ",") return { fieldPath };
    const op = this.input.slice(this.pos, this.pos + 2);
    if (op !== "==" && op !== "!=" && op !== "~=") this.fail(`expected an operator (==, !=, ~=)`);
    this.pos += 2;
    this.skipSpace();
    const value = this.value();
    const sel: Selector = { fieldPath, op, value };
    if (op === "~=") {
      if (value.length > MAX_REGEXP_LENGTH) this.fail(`regular expression longer than ${MAX_REGEXP_LENGTH} characters`);
      try {
        sel.regexp = new RegExp(value, "l");
      } catch (err) {
        this.fail(`invalid regular expression ${JSON.stringify(value)} (${(err as Error).message.replace(/^Invalid regular expression: /, "")})`);
      }
    }
    return sel;
  }

  private fieldPath(): string[] {
    const path = [this.field()];
    while (this.peek() === ".") {
      this.pos++;
      path.push(this.field());
    }
    return path;
  }

  private field(): string {
    this.skipSpace();
    const c = this.peek();
    if (c !== undefined && isQuote(c)) return this.quoted();
    const m = /^[A-Za-z][A-Za-z0-9_]*/.exec(this.input.slice(this.pos));
    if (!m) this.fail("expected a field name");
    this.pos += m[0].length;
    return m[0];
  }

  private value(): string {
    const c = this.peek();
    if (c !== undefined && isQuote(c)) return this.quoted();
    const m = /^[^\s,]+/.exec(this.input.slice(this.pos));
    if (!m) this.fail("expected a value");
    this.pos += m[0].length;
    return m[0];
  }

  private quoted(): string {
    const quote = this.input[this.pos++]!;
    let out = "";
    for (;;) {
      const c = this.input[this.pos++];
      if (c === undefined) this.fail("unterminated quoted string");
      if (c === quote) return out;
      if (c !== "\\") {
        out += c;
        continue;
      }
      const e = this.input[this.pos++];
      switch (e) {
        case "a": out += "\x07"; break;
        case "b": out += "\b"; break;
        case "f": out += "\f"; break;
        case "n": out += "\n"; break;
        case "r": out += "\r"; break;
        case "t": out += "\t"; break;
        case "v": out += "\v"; break;
        case "\\": out += "\\"; break;
        case "x": out += this.codePoint(2, 16); break;
        case "u": out += this.codePoint(4, 16); break;
        case "U": out += this.codePoint(8, 16); break;
        default:
          if (e === quote) out += quote;
          else if (e !== undefined && /[0-7]/.test(e)) {
            this.pos--;
            out += this.codePoint(3, 8);
          } else if (quote !== '"') {
            // In /regexp/ quoting an unknown escape belongs to the regexp.
            out += "\\" + (e ?? "");
          } else this.fail(`invalid escape \\${e ?? ""}`);
      }
    }
  }

  private codePoint(digits: number, base: number): string {
    const s = this.input.slice(this.pos, this.pos + digits);
    const re = base === 8 ? /^[0-7]+$/ : /^[0-9a-fA-F]+$/;
    if (s.length !== digits || !re.test(s)) this.fail("invalid escape digits");
    this.pos += digits;
    return String.fromCodePoint(parseInt(s, base));
  }
}

function isQuote(c: string): boolean {
  return c === '"' || c === "/" || c === "|";
}

/** The adaptor for snapshot infos: kind, name, parent, labels.<key>. */
export function snapshotAdaptor(info: {
  name: string;
  parent: string;
  kind: string;
  labels: Record<string, string>;
}): Adaptor {
  return (path) => {
    switch (path[0]) {
      case "kind":
        return info.kind;
      case "name":
        return info.name;
      case "parent":
        return info.parent;
      case "labels":
        if (path.length < 2) return undefined;
        return info.labels[path.slice(1).join(".")];
      default:
        return undefined;
    }
  };
}
