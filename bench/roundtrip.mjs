// NIP-46 sign_event round-trip load driver: N real nostr-tools clients, C requests
// in flight each, through a running keycast-tw daemon and a loopback relay.
//
// Usage (after `cd tests/interop && npm install`):
//   node bench/roundtrip.mjs --uri 'bunker://...' [--uri ...] [--clients 4] [--inflight 5]
//        [--requests 400] [--timeout-ms 10000] [--max-seconds 60]
//
// Client i uses the i-th --uri (round robin): give one authorization per client
// when the daemon's connect secrets are single-use.  Connecting is not timed.
// The run is bounded: at most --requests sign_event requests in total, no new
// request after --max-seconds, each request abandoned after --timeout-ms.  Only
// relays on 127.0.0.1 / localhost / [::1] are accepted (checked before connecting).
// Prints one JSON line: requests, ok, errors, timeouts, seconds, rps, p50_ms,
// p90_ms, p99_ms, max_ms; exit 1 if a client could not open or connect, or a request failed.
// Do not benchmark through LocalRelay: it adds a ~44 ms floor per round trip.

import { parseArgs } from 'node:util'
import { performance } from 'node:perf_hooks'
import { openSigner, withTimeout, describeError } from '../tests/interop/nip46_session.mjs'

function fail (message) {
  process.stderr.write(`roundtrip.mjs: ${message}\n`)
  process.exit(2)
}

function positiveInt (options, name) {
  const value = Number(options[name])
  if (!Number.isInteger(value) || value <= 0) fail(`--${name} must be a positive integer`)
  return value
}

function readOptions () {
  let values
  try {
    values = parseArgs({
      options: {
        uri: { type: 'string', multiple: true },
        clients: { type: 'string', default: '4' },
        inflight: { type: 'string', default: '5' },
        requests: { type: 'string', default: '400' },
        'timeout-ms': { type: 'string', default: '10000' },
        'max-seconds': { type: 'string', default: '60' }
      }
    }).values
  } catch (err) {
    fail(err.message)
  }
  if (!values.uri?.length) fail('at least one --uri is required')
  return {
    uris: values.uri,
    clients: positiveInt(values, 'clients'),
    inflight: positiveInt(values, 'inflight'),
    requests: positiveInt(values, 'requests'),
    timeoutMs: positiveInt(values, 'timeout-ms'),
    maxSeconds: positiveInt(values, 'max-seconds')
  }
}

function percentile (sorted, p) {
  if (sorted.length === 0) return null
  const rank = Math.ceil((p / 100) * sorted.length)
  return Math.round(sorted[Math.max(0, rank - 1)] * 10) / 10
}

async function main () {
  const options = readOptions()
  const sessions = []
  try {
    for (let i = 0; i < options.clients; i++) {
      const session = await openSigner(options.uris[i % options.uris.length])
      sessions.push(session)
    }
    await Promise.all(sessions.map(s => withTimeout(s.signer.connect({ name: 'keycast-bench' }), options.timeoutMs)))
  } catch (err) {
    process.stderr.write(`roundtrip.mjs: ${describeError(err).error}\n`)
    await Promise.all(sessions.map(s => s.close()))
    process.exit(1)
  }

  const latencies = []
  let issued = 0
  let errors = 0
  let timeouts = 0
  const firstError = {}
  const started = performance.now()
  const stopIssuingAt = started + options.maxSeconds * 1000

  async function worker (session) {
    while (issued < options.requests && performance.now() < stopIssuingAt) {
      issued++
      const template = { kind: 1, created_at: Math.floor(Date.now() / 1000), tags: [], content: `bench ${issued}` }
      const t0 = performance.now()
      try {
        await withTimeout(session.signer.signEvent(template), options.timeoutMs)
        latencies.push(performance.now() - t0)
      } catch (err) {
        const { error, source } = describeError(err)
        if (source === 'timeout') timeouts++
        else errors++
        firstError[source] ??= error
      }
    }
  }

  await Promise.all(sessions.flatMap(s => Array.from({ length: options.inflight }, () => worker(s))))
  const seconds = (performance.now() - started) / 1000
  latencies.sort((a, b) => a - b)
  process.stdout.write(JSON.stringify({
    clients: options.clients,
    inflight: options.inflight,
    requests: issued,
    ok: latencies.length,
    errors,
    timeouts,
    first_errors: firstError,
    seconds: Math.round(seconds * 1000) / 1000,
    rps: Math.round((latencies.length / seconds) * 10) / 10,
    p50_ms: percentile(latencies, 50),
    p90_ms: percentile(latencies, 90),
    p99_ms: percentile(latencies, 99),
    max_ms: percentile(latencies, 100)
  }) + '\n')
  await withTimeout(Promise.all(sessions.map(s => s.close())), 2000).catch(() => {})
  process.exit(errors + timeouts === 0 ? 0 : 1)
}

main()
