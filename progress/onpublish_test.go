package progress

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"taskstream/progress/progresstest"
)

// OnPublish hears of every append step with the number of events it
// appended: one per Publish, the batch's size for a fresh PublishOnce,
// none for a PublishOnce whose batch was already published or a refused
// event.
func TestOnPublishCountsAppendedEvents(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		var mu sync.Mutex
		var heard []string
		log := NewLog(srv.Client(t), LogConfig{OnPublish: func(group string, appended int, took time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			heard = append(heard, fmt.Sprintf("%s %d err=%v negative=%v", group, appended, err != nil, took < 0))
		}})
		ctx := context.Background()
		steps := []struct {
			name string
			do   func() error
			want string // "" when the hook must not be called
		}{
			{"publish", func() error { _, err := log.Publish(ctx, "job:a", "state", nil); return err }, "job:a 1 err=false negative=false"},
			{"fresh batch", func() error {
				_, _, err := log.PublishOnce(ctx, "job:a", "k1", Draft{Name: "state"}, Draft{Name: "result"})
				return err
			}, "job:a 2 err=false negative=false"},
			{"batch again", func() error {
				_, _, err := log.PublishOnce(ctx, "job:a", "k1", Draft{Name: "state"}, Draft{Name: "result"})
				return err
			}, "job:a 0 err=false negative=false"},
			{"invalid name, refused before Redis", func() error {
				if _, err := log.Publish(ctx, "chat:r", "Bad Name", nil); err == nil {
					return fmt.Errorf("a bad name was accepted")
				}
				return nil
			}, ""},
		}
		for _, st := range steps {
			mu.Lock()
			before := len(heard)
			mu.Unlock()
			if err := st.do(); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			mu.Lock()
			got := heard[before:]
			mu.Unlock()
			switch {
			case st.want == "" && len(got) != 0:
				t.Errorf("%s: hook heard %q, want nothing", st.name, got)
			case st.want != "" && (len(got) != 1 || got[0] != st.want):
				t.Errorf("%s: hook heard %q, want %q", st.name, got, st.want)
			}
		}
	})
}
