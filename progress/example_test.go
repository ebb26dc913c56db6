package progress_test

import (
	"context"
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

// Any Go process that shares the Redis pushes a notification to a user's
// tabs with one call (the README shows this code).
func ExampleNotify() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx, userID := context.Background(), "u42"

	log := progress.NewLog(rdb, progress.LogConfig{})
	ev, err := progress.Notify(ctx, log, progress.UserGroup(userID), progress.Notification{
		Title: "Report ready", Body: "Your March report is done.", Link: "/#job-42",
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(ev.Group, ev.Seq, ev.Name, string(ev.Data))
	// Output: user:u42 1 notification {"title":"Report ready","body":"Your March report is done.","link":"/#job-42"}
}
