import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Each file gets its own database, so files run in parallel; 2 cores -> 2 workers.
    pool: 'forks',
    maxWorkers: 2,
  },
})
