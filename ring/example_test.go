package ring_test

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/flarecast/flarecast/ring"
)

type event struct{ body string }

// The shape of flarecast's dispatcher: producers publish and get the
// message_id back; one consumer drains in sequence order into the history.
func Example() {
	r := ring.New[*event](10_000, 1)
	hist := ring.NewHistory[*event](100_000, 64<<20)

	var producers sync.WaitGroup
	for _, body := range []string{"a", "b", "c"} {
		producers.Go(func() {
			if _, err := r.Publish(context.Background(), &event{body}); err != nil {
				return // ctx done or ring closed: nothing was accepted
			}
			// reply to the producer with the message_id here
		})
	}
	go func() { producers.Wait(); r.Close() }()

	ctx := context.Background()
	for {
		if err := r.Wait(ctx); err != nil {
			if errors.Is(err, ring.ErrClosed) {
				break // closed and drained
			}
			panic(err)
		}
		r.Consume(256, func(id uint64, ev *event) {
			hist.Append(id, ev, len(ev.body))
			// match subscriptions and fan out here
		})
	}
	first, _ := hist.First()
	last, _ := hist.Last()
	fmt.Println(hist.Len(), first, last)
	// Output: 3 1 3
}
