/**
 * The WebAssembly modules that `npm run build` compiles from asm/ into dist/: each compiled once
 * per thread, on first use. Null where one cannot run (no file, no SIMD): its caller then does
 * the same work in JavaScript.
 */
import fs from 'node:fs'

/** The part of WebAssembly used here (@types/node 20 does not declare it). */
const wasm = (
  globalThis as unknown as {
    WebAssembly: {
      Module: new (bytes: Uint8Array) => object
      Instance: new (module: object) => { exports: unknown }
    }
  }
).WebAssembly

const modules = new Map<string, object | null>()

/** A new instance of the module in `file` (its own memory), or null. */
export function instantiate<Exports>(file: string): Exports | null {
  let module = modules.get(file)
  if (module === undefined) {
    try {
      module = new wasm.Module(fs.readFileSync(file))
    } catch {
      module = null
    }
    modules.set(file, module)
  }
  if (module === null) return null
  try {
    return new wasm.Instance(module).exports as Exports
  } catch {
    return null
  }
}

/** An exported global, as JavaScript sees it. */
export interface WasmGlobal {
  value: number
}
