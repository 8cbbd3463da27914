// A real NIP-46 client (nostr-tools BunkerSigner) driven by a JSON scenario.
//
// Usage:
//   node bunker_client.mjs --uri 'bunker://...' --scenario '[{"op":"connect"},{"op":"ping"}]'
//        [--scenario-file PATH] [--timeout-ms 10000] [--client-secret HEX] [--keep-going]
//   node bunker_client.mjs --nostrconnect ws://127.0.0.1:PORT [--nostrconnect ...]
//        [--name NAME] [--perms sign_event:1,nip44_encrypt] [--wait-ms 30000] --scenario ...
//
// --nostrconnect is the client-initiated flow: the client makes its key and a
// nostrconnect:// URI on those relays, prints
//   {"event":"nostrconnect_uri","uri":"nostrconnect://...","client_pubkey":...}
// once it listens, and waits (at most --wait-ms) in BunkerSigner.fromURI for the
// signer's connect response; then it runs the scenario as usual.  Exit status 1
// with {"event":"end","ok":false,"error":...} when no response came.
//
// Prints JSON lines on stdout:
//   {"event":"start","client_pubkey":...,"bunker_pubkey":...,"relays":[...]}
//   {"step":0,"op":"connect","ok":true,"result":null,"ms":12.3}
//   {"step":1,"op":"ping","ok":false,"error":"...","source":"bunker|timeout|client","ms":...}
//   {"event":"end","ok":false}
// Exit status: 0 when every step succeeded, 1 when one failed, 2 for bad usage.
// After a timeout the remaining steps are reported as skipped (the bunker is
// not answering) unless --keep-going is given.
//
// Steps ("op" plus fields):
//   connect {name?}                  connect with the URI's secret
//   ping                             expects "pong"
//   get_public_key                   the user's pubkey (remembered as "self")
//   sign_event {event}               event template: kind, content, tags, created_at?
//   nip44_roundtrip / nip04_roundtrip {plaintext, peer?: hex|"self", peer_secret?: hex}
//       encrypt then decrypt through the bunker; with peer_secret also checks that
//       the peer can read the bunker's ciphertext and the bunker can read the peer's
//   switch_relays                    the library's own switch (re-subscribes on change)
//   logout                           expects "ack"; the signer is closed afterwards
//   request {method, params}         any raw request; the result is returned as is

import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { performance } from 'node:perf_hooks'
import { getPublicKey } from 'nostr-tools/pure'
import * as nip04 from 'nostr-tools/nip04'
import * as nip44 from 'nostr-tools/nip44'
import {
  openSigner, openNostrConnect, withTimeout, describeError, hexToBytes, StepTimeout
} from './nip46_session.mjs'

const OPS = new Set([
  'connect', 'ping', 'get_public_key', 'sign_event', 'nip44_roundtrip', 'nip04_roundtrip',
  'switch_relays', 'logout', 'request'
])

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function usage (message) {
  process.stderr.write(`bunker_client.mjs: ${message}\n`)
  process.exit(2)
}

function readOptions () {
  let parsed
  try {
    parsed = parseArgs({
      options: {
        uri: { type: 'string' },
        scenario: { type: 'string' },
        'scenario-file': { type: 'string' },
        'timeout-ms': { type: 'string', default: '10000' },
        'client-secret': { type: 'string' },
        'keep-going': { type: 'boolean', default: false },
        nostrconnect: { type: 'string', multiple: true },
        name: { type: 'string', default: 'keycast interop' },
        perms: { type: 'string', default: '' },
        'wait-ms': { type: 'string', default: '30000' }
      }
    }).values
  } catch (err) {
    usage(err.message)
  }
  if (!parsed.uri === !parsed.nostrconnect) usage('give either --uri or --nostrconnect')
  const waitMs = Number(parsed['wait-ms'])
  if (!Number.isInteger(waitMs) || waitMs <= 0) usage('--wait-ms must be a positive integer')
  const text = parsed.scenario ?? (parsed['scenario-file'] ? readFileSync(parsed['scenario-file'], 'utf8') : null)
  if (text === null) usage('--scenario or --scenario-file is required')
  let steps
  try {
    steps = JSON.parse(text)
  } catch (err) {
    usage(`scenario is not JSON: ${err.message}`)
  }
  if (!Array.isArray(steps) || !steps.every(s => s && OPS.has(s.op))) {
    usage(`scenario must be a JSON array of steps whose "op" is one of ${[...OPS].join(', ')}`)
  }
  const timeoutMs = Number(parsed['timeout-ms'])
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) usage('--timeout-ms must be a positive integer')
  return {
    uri: parsed.uri,
    steps,
    timeoutMs,
    clientSecret: parsed['client-secret'],
    keepGoing: parsed['keep-going'],
    nostrconnect: parsed.nostrconnect,
    name: parsed.name,
    perms: parsed.perms.split(',').filter(Boolean),
    waitMs
  }
}

// The local half of a round trip with a peer whose secret key we hold.
const schemes = {
  nip44: {
    peerEncrypt: (peerSecret, userPubkey, text) => nip44.encrypt(text, nip44.getConversationKey(peerSecret, userPubkey)),
    peerDecrypt: (peerSecret, userPubkey, payload) => nip44.decrypt(payload, nip44.getConversationKey(peerSecret, userPubkey))
  },
  nip04: {
    peerEncrypt: (peerSecret, userPubkey, text) => nip04.encrypt(peerSecret, userPubkey, text),
    peerDecrypt: (peerSecret, userPubkey, payload) => nip04.decrypt(peerSecret, userPubkey, payload)
  }
}

async function roundtrip (session, state, scheme, step) {
  const { signer } = session
  const encrypt = scheme === 'nip44' ? signer.nip44Encrypt.bind(signer) : signer.nip04Encrypt.bind(signer)
  const decrypt = scheme === 'nip44' ? signer.nip44Decrypt.bind(signer) : signer.nip04Decrypt.bind(signer)
  const peerSecret = step.peer_secret ? hexToBytes(step.peer_secret) : null
  let peer = step.peer ?? 'self'
  if (peerSecret) peer = getPublicKey(peerSecret)
  if (peer === 'self') peer = state.userPubkey ?? await signer.getPublicKey()
  const plaintext = step.plaintext ?? 'keycast interop'
  const ciphertext = await encrypt(peer, plaintext)
  const decrypted = await decrypt(peer, ciphertext)
  const result = { peer, ciphertext, decrypted, match: decrypted === plaintext }
  if (peerSecret) {
    const userPubkey = state.userPubkey ?? await signer.getPublicKey()
    const local = schemes[scheme]
    result.peer_decrypts = (await local.peerDecrypt(peerSecret, userPubkey, ciphertext)) === plaintext
    const fromPeer = await local.peerEncrypt(peerSecret, userPubkey, plaintext)
    result.bunker_decrypts = (await decrypt(peer, fromPeer)) === plaintext
  }
  return result
}

// switchRelays() swallows the reply; record it on the way through.
async function switchRelays (session) {
  const { signer } = session
  const original = signer.sendRequest.bind(signer)
  const seen = {}
  signer.sendRequest = async (method, params) => {
    try {
      seen.reply = await original(method, params)
      return seen.reply
    } catch (err) {
      seen.error = err
      throw err
    }
  }
  try {
    const switched = await signer.switchRelays()
    if (seen.error !== undefined) throw seen.error
    return { switched, reply: seen.reply ?? null, relays: signer.bp.relays }
  } finally {
    signer.sendRequest = original
  }
}

function elapsed (started) {
  return Math.round((performance.now() - started) * 10) / 10
}

async function runStep (session, state, step) {
  const { signer } = session
  switch (step.op) {
    case 'connect':
      await signer.connect(step.name ? { name: step.name } : undefined)
      return null
    case 'ping':
      await signer.ping()
      return 'pong'
    case 'get_public_key':
      state.userPubkey = await signer.getPublicKey()
      return state.userPubkey
    case 'sign_event': {
      const template = { created_at: Math.floor(Date.now() / 1000), tags: [], content: '', ...step.event }
      return await signer.signEvent(template)
    }
    case 'nip44_roundtrip':
      return await roundtrip(session, state, 'nip44', step)
    case 'nip04_roundtrip':
      return await roundtrip(session, state, 'nip04', step)
    case 'switch_relays':
      return await switchRelays(session)
    case 'logout':
      await signer.logout()
      return 'ack'
    case 'request':
      return await signer.sendRequest(step.method, step.params ?? [])
  }
}

async function main () {
  const options = readOptions()
  let session
  if (options.nostrconnect) {
    try {
      session = await openNostrConnect(options.nostrconnect, {
        name: options.name,
        perms: options.perms,
        waitMs: options.waitMs,
        onUri: (uri, clientPubkey) => emit({ event: 'nostrconnect_uri', uri, client_pubkey: clientPubkey })
      })
    } catch (err) {
      emit({ event: 'end', ok: false, ...describeError(err) })
      process.exit(1)
    }
  } else {
    try {
      session = await openSigner(options.uri, { clientSecretHex: options.clientSecret })
    } catch (err) {
      usage(String(err?.message ?? err))
    }
  }
  emit({
    event: 'start',
    client_pubkey: session.clientPubkey,
    bunker_pubkey: session.pointer.pubkey,
    relays: session.pointer.relays
  })
  const state = {}
  let allOk = true
  let stalled = false
  for (const [index, step] of options.steps.entries()) {
    if (stalled) {
      emit({ step: index, op: step.op, ok: false, error: 'skipped after a timeout', source: 'skipped', ms: 0 })
      continue
    }
    const started = performance.now()
    try {
      const result = await withTimeout(runStep(session, state, step), step.timeout_ms ?? options.timeoutMs)
      emit({ step: index, op: step.op, ok: true, result, ms: elapsed(started) })
    } catch (err) {
      allOk = false
      stalled = err instanceof StepTimeout && !options.keepGoing
      emit({ step: index, op: step.op, ok: false, ...describeError(err), ms: elapsed(started) })
    }
  }
  emit({ event: 'end', ok: allOk })
  // Closing the pool can wait on sockets; the outcome is already printed.
  await withTimeout(session.close(), 2000).catch(() => {})
  process.exit(allOk ? 0 : 1)
}

main()
