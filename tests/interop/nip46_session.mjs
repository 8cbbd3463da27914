// Shared by bunker_client.mjs and bench/roundtrip.mjs: opens a nostr-tools
// BunkerSigner on Node and bounds every request in time.
//
// It lives in tests/interop so that `nostr-tools` and `ws` resolve from
// tests/interop/node_modules even when the importing script is elsewhere (bench/).

import WebSocket from 'ws'
import { useWebSocketImplementation, SimplePool } from 'nostr-tools/pool'
import { BunkerSigner, createNostrConnectURI, parseBunkerInput } from 'nostr-tools/nip46'
import { generateSecretKey, getPublicKey } from 'nostr-tools/pure'
import { hexToBytes, bytesToHex } from 'nostr-tools/utils'

// Node 20 has no global WebSocket; SimplePool reads this implementation.
useWebSocketImplementation(WebSocket)

export class StepTimeout extends Error {
  constructor (ms) {
    super(`timeout after ${ms} ms`)
    this.name = 'StepTimeout'
  }
}

// nostr-tools requests never time out on their own: race them against a timer.
export function withTimeout (promise, ms) {
  let timer
  const expiry = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new StepTimeout(ms)), ms)
  })
  return Promise.race([promise, expiry]).finally(() => clearTimeout(timer))
}

// Where a failure came from: the bunker's error reply (nostr-tools rejects with
// the bare `error` string), our own timer, or the client library itself.
export function describeError (err) {
  if (err instanceof StepTimeout) {
    return { error: err.message, source: 'timeout' }
  }
  if (typeof err === 'string') {
    return { error: err, source: 'bunker' }
  }
  if (err instanceof AggregateError) {
    return { error: err.errors.map(e => String(e?.message ?? e)).join('; '), source: 'client' }
  }
  return { error: String(err?.message ?? err), source: 'client' }
}

// The harness and the bench only ever talk to relays on this machine.
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]'])

function checkLoopback (relays) {
  for (const relay of relays) {
    let host
    try {
      host = new URL(relay).hostname
    } catch {
      throw new Error(`bad relay URL ${relay}`)
    }
    if (!LOOPBACK.has(host)) throw new Error(`relay ${relay} is not on loopback`)
  }
}

// The client-initiated flow: make a client key and a nostrconnect:// URI
// (createNostrConnectURI), hand the URI to `onUri` once the client listens on
// every relay, then wait in BunkerSigner.fromURI (at most `waitMs`) for the
// signer's connect response carrying the secret.  Opening the relays first
// means fromURI's REQ is on the wire before anyone can read the URI: relays do
// not store kind 24133, so a response sent before the REQ would be lost.
export async function openNostrConnect (relays, { name, perms = [], waitMs, onUri }) {
  checkLoopback(relays)
  const secretKey = generateSecretKey()
  const clientPubkey = getPublicKey(secretKey)
  const secret = bytesToHex(generateSecretKey()).slice(0, 16)
  const uri = createNostrConnectURI({ clientPubkey, relays, secret, perms, name })
  const pool = new SimplePool()
  await Promise.all(relays.map(url => pool.ensureRelay(url)))
  const waiting = BunkerSigner.fromURI(secretKey, uri, { pool, onauth: () => {} }, waitMs)
  // Hand out the URI only once the relays hold fromURI's subscription: LocalRelay keeps no
  // kind 24133, so a response published before that REQ is live would be lost. A relay answers
  // one connection's REQs in order, so the EOSE of this probe (same filter, sent after
  // fromURI's) means that REQ is live.
  await new Promise(resolve => {
    const probe = pool.subscribe(relays, { kinds: [24133], '#p': [clientPubkey], limit: 0 }, {
      oneose: () => {
        probe.close()
        resolve()
      }
    })
  })
  onUri(uri, clientPubkey)
  let signer
  try {
    signer = await withTimeout(waiting, waitMs)
  } catch (err) {
    pool.destroy()
    throw err
  }
  return {
    signer,
    pool,
    pointer: signer.bp,
    secretKey,
    clientPubkey,
    async close () {
      await signer.close()
      pool.destroy()
    }
  }
}

// Parse a bunker:// URI and open a signer with its own relay pool.  The pool
// must be passed explicitly: nip46.js bundles a pool of its own that ignores
// useWebSocketImplementation.  Relays off loopback are refused before any
// connection is made.
export async function openSigner (uri, { clientSecretHex } = {}) {
  const pointer = uri.startsWith('bunker://') ? await parseBunkerInput(uri) : null
  if (pointer === null) {
    throw new Error('not a bunker:// URI')
  }
  checkLoopback(pointer.relays)
  const secretKey = clientSecretHex ? hexToBytes(clientSecretHex) : generateSecretKey()
  const pool = new SimplePool()
  const signer = BunkerSigner.fromBunker(secretKey, pointer, { pool, onauth: () => {} })
  return {
    signer,
    pool,
    pointer,
    secretKey,
    clientPubkey: getPublicKey(secretKey),
    async close () {
      await signer.close()
      pool.destroy()
    }
  }
}

export { bytesToHex, hexToBytes }
