/**
 * Seeded randomness for everything the evaluator draws (Thompson sampling, synthetic traffic), so
 * that a run with the same --seed gives the same numbers. Hand-written because it is small and
 * must be exactly reproducible across versions: sfc32 (PractRand-clean, fast in JS), seeded
 * through splitmix32 so that nearby seeds give unrelated streams.
 */
export type Random = () => number

function splitmix32(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s + 0x9e3779b9) >>> 0
    let z = s
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0
    return (z ^ (z >>> 16)) >>> 0
  }
}

/** A uniform [0, 1) generator from an integer or a string seed (FNV-1a of the string). */
export function seededRandom(seed: number | string): Random {
  let n: number
  if (typeof seed === 'string') {
    n = 0x811c9dc5
    for (let i = 0; i < seed.length; i++) n = Math.imul(n ^ seed.charCodeAt(i), 0x01000193) >>> 0
  } else {
    n = (seed >>> 0) ^ Math.floor(seed / 0x100000000)
  }
  const init = splitmix32(n)
  let a = init()
  let b = init()
  let c = init()
  let d = init()
  const next = (): number => {
    const t = (((a + b) | 0) + d) | 0
    d = (d + 1) | 0
    a = b ^ (b >>> 9)
    b = (c + (c << 3)) | 0
    c = (c << 21) | (c >>> 11)
    c = (c + t) | 0
    return (t >>> 0) / 4294967296
  }
  for (let i = 0; i < 12; i++) next()
  return next
}

/** Standard normal (Box-Muller, one value per call; the second is dropped for simplicity). */
export function sampleNormal(rng: Random): number {
  let u = 0
  while (u === 0) u = rng()
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng())
}

/** Gamma(shape, 1), Marsaglia & Tsang (2000); shape < 1 through the boost u^(1/shape). */
export function sampleGamma(rng: Random, shape: number): number {
  if (!(shape > 0)) throw new RangeError(`gamma shape must be > 0, got ${shape}`)
  if (shape < 1) {
    let u = 0
    while (u === 0) u = rng()
    return sampleGamma(rng, shape + 1) * Math.pow(u, 1 / shape)
  }
  const d = shape - 1 / 3
  const c = 1 / Math.sqrt(9 * d)
  for (;;) {
    let x: number
    let v: number
    do {
      x = sampleNormal(rng)
      v = 1 + c * x
    } while (v <= 0)
    v = v * v * v
    const u = rng()
    if (u < 1 - 0.0331 * x * x * x * x) return d * v
    if (Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v
  }
}

/** Beta(a, b) as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b). */
export function sampleBeta(rng: Random, a: number, b: number): number {
  const x = sampleGamma(rng, a)
  const y = sampleGamma(rng, b)
  return x / (x + y)
}

/** Exponential with the given mean (inter-arrival times). */
export function sampleExponential(rng: Random, mean: number): number {
  let u = 0
  while (u === 0) u = rng()
  return -Math.log(u) * mean
}
