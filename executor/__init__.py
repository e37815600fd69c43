"""The executor's machinery behind the activities: what turns a plan into a sent
transaction and a told result, exactly once.

`dispatch` owns a plan's hot path (lease, build, policy, sign, record, the send gate, the
send); `build` turns a plan into a v0 message; `policy` checks it before it is signed;
`keystore` holds the hot keys and signs; `wallets` is the shared wallet pool (leases in NATS
KV); `records` is the plan's create-only record (the commit point) and its stored result;
`submit` sends by route (rpc, Jito bundle, TPU); `confirm` follows a signature to the
chain's verdict; `settle` reads what it cost; `publish` puts the result on EXECUTED. It
stands on `venue/` (the Solana side) and the wire messages in `workflows/`, and imports
neither `activities/` nor `worker/`. See docs/architecture.md sections 2 and 9-13.
"""
