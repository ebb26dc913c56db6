// Package wire owns taskstream's protocol vocabulary, as docs/protocol.md
// defines it: group names, event names, job states, socket operations and
// frame types, error codes and close codes. The server, the Go client, the
// tools and the tests import it instead of spelling these strings out, so
// the contract is written down once in code.
//
// It imports the standard library only.
package wire
