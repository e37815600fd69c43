"""The project's own local Solana cluster on LiteSVM, speaking the real protocols.

JSON-RPC over HTTP and websocket (`rpc`, `pubsub`, `jsonrpc`), the Jito block engine
(`blockengine`), TPU over QUIC (`tpu`), a slot clock and ledger (`cluster`, `ledger`), the
cluster as those servers see it (`view`), fault injection (`faults`) and an admin API for
tests (`admin`, `fixtures`). It is what
`dev`, the tests and the benchmark run against; see localnet/README.md.
"""
