package client_test

import (
	"testing"

	"taskstream/client"
	"taskstream/wire"
)

// A watch resumes after every close but a policy one (1008, and the
// application's 4000–4999) or a frame too large (1009).
func TestCloseErrorResumable(t *testing.T) {
	for code, want := range map[int]bool{
		wire.CloseNormal: true, wire.CloseGoingAway: true, wire.CloseTryAgain: true, 1006: true,
		wire.ClosePolicy: false, wire.CloseTooBig: false, 4000: false, 4403: false, 4999: false,
	} {
		if got := (&client.CloseError{Code: code}).Resumable(); got != want {
			t.Errorf("close %d: resumable %v, want %v", code, got, want)
		}
	}
}
