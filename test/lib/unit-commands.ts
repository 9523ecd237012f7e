/**
 * Does every command a systemd unit runs exist? For units rendered by the
 * module evaluation (test/nix-eval), whose packages are stand-ins: each
 * package is a store file holding `{ standIn, bins, scripts }` (the
 * programs it provides and, for script builders, their text), and scripts
 * written with writeShellScript are store files themselves.
 *
 * A unit's Exec lines must start with an absolute path; a store path must
 * name a program its package provides. Scripts (found as Exec programs or
 * as store paths anywhere in a command line, e.g. rootlesskit's child) are
 * read, and every command in them must be a shell builtin, a function the
 * script defines, an absolute program that exists, or a name found in a
 * package on the PATH in effect (the unit's Environment PATH, replaced by
 * the script's own `export PATH=`). Host directories on a PATH only count
 * for the setuid programs NixOS keeps in /run/wrappers/bin.
 */
import { readFileSync } from "node:fs";

const STORE = /^\/nix\/store\/[0-9a-z]{32}-[^/]+/;
const EXEC_KEYS = ["ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost", "ExecCondition"];
const BUILTINS = new Set([
  ":", ".", "[", "[[", "break", "cd", "command", "continue", "echo", "eval", "exec", "exit", "export", "false", "local",
  "printf", "pwd", "read", "return", "set", "shift", "source", "test", "trap", "true", "unset", "wait", "then", "else",
  "elif", "fi", "do", "done", "if", "while", "until", "for", "case", "esac", "in", "!", "{", "}", "]", "]]",
]);
/** Programs only the host provides, and where NixOS has them. */
const HOST_PROGRAMS: Record<string, string[]> = { newuidmap: ["/run/wrappers/bin"], newgidmap: ["/run/wrappers/bin"] };

interface StandIn {
  standIn: string;
  bins: string[];
  scripts: Record<string, string>;
}

function readStandIn(root: string): StandIn | undefined {
  try {
    const v = JSON.parse(readFileSync(root, "utf8")) as StandIn;
    return typeof v === "object" && v !== null && "standIn" in v ? v : undefined;
  } catch {
    return undefined;
  }
}

/** The PATH a rendered unit sets (its last Environment=PATH=...), or []. */
export function unitPath(text: string): string[] {
  return (
    text
      .split("\n")
      .filter((l) => l.startsWith("Environment="))
      .map((l) => l.slice("Environment=".length).replace(/^"|"$/g, ""))
      .filter((v) => v.startsWith("PATH="))
      .map((v) => v.slice("PATH=".length).split(":"))
      .at(-1) ?? []
  );
}

export interface Problem {
  where: string;
  message: string;
}

export class CommandChecker {
  readonly problems: Problem[] = [];
  private readonly seen = new Set<string>();

  /** Checks the rendered text of a unit named `name`. */
  checkUnit(name: string, text: string): void {
    const lines = text.replace(/\\\n/g, " ").split("\n");
    const path = unitPath(text);
    for (const l of lines) {
      const key = l.slice(0, l.indexOf("="));
      if (!EXEC_KEYS.includes(key)) continue;
      const value = l.slice(key.length + 1).replace(/^[-@:+!]+/, "");
      this.checkCommandLine(`${name} ${key}`, value, path, true);
    }
  }

  /**
   * Programs a unit's main process runs by name (the daemon's nix-store,
   * mount, umount) must be on the unit's Environment PATH.
   */
  requireOnPath(name: string, text: string, programs: string[]): void {
    const path = unitPath(text);
    for (const p of programs) {
      if (!this.resolves(p, path)) this.problems.push({ where: name, message: `${p} is not on its PATH (${path.join(":") || "empty"})` });
    }
  }

  /** A command line: its program, then any store paths among its arguments. */
  private checkCommandLine(where: string, line: string, path: string[], mustBeAbsolute: boolean): void {
    const words = line.trim().split(/\s+/).filter((w) => w !== "");
    if (words.length === 0) return;
    const [program, ...args] = words;
    if (mustBeAbsolute && !program!.startsWith("/")) {
      this.problems.push({ where, message: `${program} is not an absolute path (systemd does not search the unit's PATH)` });
    } else {
      this.checkProgram(where, program!, path);
    }
    for (const a of args) {
      const p = a.replace(/^['"]|['";]$/g, "").replace(/^--?[a-z-]+=/, "");
      if (STORE.test(p)) this.checkStorePath(where, p, path, false);
    }
  }

  private checkProgram(where: string, program: string, path: string[]): void {
    if (program.startsWith("/")) {
      if (STORE.test(program)) this.checkStorePath(where, program, path, true);
      else if (!this.onHost(program)) this.problems.push({ where, message: `${program} is outside the store` });
      return;
    }
    if (this.resolves(program, path)) return;
    this.problems.push({ where, message: `${program} is not on its PATH (${path.join(":") || "empty"})` });
  }

  private onHost(program: string): boolean {
    const name = program.slice(program.lastIndexOf("/") + 1);
    return (HOST_PROGRAMS[name] ?? []).some((d) => program === `${d}/${name}`);
  }

  /** A store path used as a program (or mentioned): it must exist as one. */
  private checkStorePath(where: string, p: string, path: string[], asProgram: boolean): void {
    const root = STORE.exec(p)![0];
    const rest = p.slice(root.length);
    const standIn = readStandIn(root);
    if (standIn) {
      if (rest === "") return; // the package itself (e.g. a config file or a PATH entry)
      const m = /^\/(?:bin|sbin)\/([^/]+)$/.exec(rest);
      if (!m) return; // a data file inside a package, e.g. a unit's config
      const name = m[1]!;
      if (!standIn.bins.includes(name)) {
        this.problems.push({ where, message: `${p}: ${standIn.standIn} has no ${name}` });
        return;
      }
      const script = standIn.scripts[name];
      if (script !== undefined) this.checkScript(`${where} > ${name}`, `${root}/bin/${name}`, script, path);
      return;
    }
    let text: string;
    try {
      text = readFileSync(root, "utf8");
    } catch {
      if (asProgram) this.problems.push({ where, message: `${p} does not exist` });
      return;
    }
    if (rest === "" && text.startsWith("#!")) this.checkScript(`${where} > ${root.slice(44)}`, root, text, path);
    else if (asProgram && rest === "") this.problems.push({ where, message: `${p} is not a program` });
  }

  /** Every command of a shell script, with the PATH it sets or inherits. */
  checkScript(where: string, key: string, text: string, inherited: string[]): void {
    const id = `${key} ${inherited.join(":")}`;
    if (this.seen.has(id)) return;
    this.seen.add(id);
    let path = inherited;
    const body = text
      .split("\n")
      .filter((l) => !/^\s*#/.test(l))
      .join("\n")
      .replace(/\\\n/g, " ");
    const functions = new Set([...body.matchAll(/^\s*([A-Za-z_][A-Za-z0-9_-]*)\s*\(\)\s*\{/gm)].map((m) => m[1]!));
    for (const rawLine of body.split("\n")) {
      const exported = /^\s*export PATH=("?)([^"\s]*)\1/.exec(rawLine);
      if (exported) {
        path = exported[2]!.split(":").flatMap((d) => (d === "$PATH" || d === "${PATH}" ? inherited : [d]));
        continue;
      }
      // Command substitutions are commands of their own; quoted text is not.
      const subs = [...rawLine.matchAll(/\$\(([^()]*)\)/g)].map((m) => m[1]!);
      const line = rawLine.replace(/\$\([^()]*\)/g, "X").replace(/"(?:[^"\\]|\\.)*"|'[^']*'/g, "Q");
      for (const segment of [...line.split(/;|&&|\|\||\||\(|\)/), ...subs]) {
        const words = segment.trim().split(/\s+/).filter((w) => w !== "");
        while (words.length > 0 && (/^[A-Za-z_][A-Za-z0-9_]*=/.test(words[0]!) || ["exec", "then", "do", "else", "if", "while", "!", "{", "command"].includes(words[0]!))) {
          words.shift();
        }
        const word = words[0];
        if (word === undefined || word === "Q" || word === "X" || word.startsWith("$") || word.startsWith("\"$") || word.startsWith(">")) continue;
        if (BUILTINS.has(word) || functions.has(word) || /^[A-Za-z_][A-Za-z0-9_-]*\(\)$/.test(word)) continue;
        this.checkProgram(where, word, path);
        for (const a of words.slice(1)) {
          const p = a.replace(/^['"]|['";]$/g, "");
          if (STORE.test(p)) this.checkStorePath(where, p, path, false);
        }
      }
    }
  }

  /** Is `name` a program of a package on `path`? */
  private resolves(name: string, path: string[]): boolean {
    for (const dir of path) {
      const m = /^(\/nix\/store\/[0-9a-z]{32}-[^/]+)\/bin$/.exec(dir);
      if (m) {
        if (readStandIn(m[1]!)?.bins.includes(name)) return true;
      } else if ((HOST_PROGRAMS[name] ?? []).includes(dir)) {
        return true;
      }
    }
    return false;
  }
}
