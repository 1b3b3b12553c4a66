package kvr

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// collect receives n events from the channel, failing after a generous wait.
func collect(t *testing.T, events <-chan Event, n int) []Event {
	t.Helper()
	var out []Event
	for len(out) < n {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("the feed ended after %d of %d events", len(out), n)
			}
			out = append(out, ev)
		case <-time.After(20 * time.Second):
			t.Fatalf("got %d of %d events", len(out), n)
		}
	}
	return out
}

func TestWatchDeliversPutsDeletesAndExpiryInLogOrder(t *testing.T) {
	r := openSingle(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, errc := r.Watch(ctx, []byte("w/"), 0)
	mustDo(t, r.Put([]byte("w/a"), []byte("1")))
	mustDo(t, r.Put([]byte("other"), []byte("not watched")))
	mustDo(t, r.Batch([]BatchOp{PutOp([]byte("w/b"), []byte("2")), DeleteOp([]byte("w/a"))}))
	mustDo(t, r.Append([]byte("w/b"), []byte("+")))
	mustDo(t, r.CAS([]byte("w/c"), nil, []byte("3"), true))
	mustDo(t, r.PutTTL([]byte("w/t"), []byte("short"), 200*time.Millisecond))
	got := collect(t, events, 7)
	want := []struct {
		kind       EventKind
		key, value string
	}{
		{EventPut, "w/a", "1"}, {EventPut, "w/b", "2"}, {EventDelete, "w/a", ""}, {EventPut, "w/b", "2+"},
		{EventPut, "w/c", "3"}, {EventPut, "w/t", "short"}, {EventExpire, "w/t", ""},
	}
	for i, w := range want {
		if got[i].Kind != w.kind || string(got[i].Key) != w.key || string(got[i].Value) != w.value {
			t.Fatalf("event %d = %v %q %q, want %v %q %q", i, got[i].Kind, got[i].Key, got[i].Value, w.kind, w.key, w.value)
		}
		if i > 0 && got[i].Index < got[i-1].Index {
			t.Fatalf("indexes out of order: %+v", got)
		}
	}
	if got[1].Index != got[2].Index {
		t.Fatal("one batch is one entry")
	}
	cancel()
	if _, ok := <-events; ok {
		t.Fatal("an event after cancel")
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("errc = %v", err)
	}
	if EventExpire.String() != "expire" || EventKind(9).String() != "EventKind(9)" {
		t.Fatal(EventKind(9).String())
	}
}

func TestWatcherNextTimesOutAndCloseIsIdempotent(t *testing.T) {
	r := openSingle(t)
	w, err := r.OpenWatcher(nil, 0)
	mustDo(t, err)
	start := time.Now()
	_, err = w.Next(100 * time.Millisecond)
	wantCode(t, err, ErrTimeout)
	if time.Since(start) < 80*time.Millisecond {
		t.Fatalf("Next returned after %v", time.Since(start))
	}
	mustDo(t, r.Put([]byte("k"), []byte("v")))
	ev, err := w.Next(5 * time.Second)
	if err != nil || string(ev.Key) != "k" || ev.Kind != EventPut {
		t.Fatalf("%+v, %v", ev, err)
	}
	mustDo(t, w.Close())
	mustDo(t, w.Close())
	_, err = w.Next(0)
	wantCode(t, err, ErrClosed)
}

// Close from another goroutine waits for a Next in progress instead of freeing the cursor
// under it.
func TestWatcherCloseDuringNext(t *testing.T) {
	r := openSingle(t)
	w, err := r.OpenWatcher(nil, 0)
	mustDo(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := w.Next(300 * time.Millisecond)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	mustDo(t, w.Close())
	if err := <-done; !errors.Is(err, ErrTimeout) {
		t.Fatalf("Next = %v", err)
	}
}

func TestWatchResumesFromIndexPlusOneAfterReopenWithoutGapsOrDuplicates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	r, err := Open(Options{Dir: dir, Extra: fastRaft()})
	mustDo(t, err)
	var written []string
	for i := 0; i < 20; i++ {
		k := fmt.Sprintf("r%02d", i)
		mustDo(t, r.Put([]byte(k), []byte("v")))
		written = append(written, k)
	}
	ctx, cancel := context.WithCancel(context.Background())
	events, errc := r.Watch(ctx, []byte("r"), 1)
	seen := collect(t, events, 12)
	cancel()
	<-errc
	mustDo(t, r.Close())

	r, err = Open(Options{Dir: dir, Extra: fastRaft()})
	mustDo(t, err)
	defer r.Close()
	for i := 20; i < 30; i++ {
		k := fmt.Sprintf("r%02d", i)
		mustDo(t, r.Put([]byte(k), []byte("v")))
		written = append(written, k)
	}
	mustDo(t, r.Delete([]byte("r00")))
	written = append(written, "r00")
	w, err := r.OpenWatcher([]byte("r"), seen[len(seen)-1].Index+1)
	mustDo(t, err)
	defer w.Close()
	all := seen
	for {
		ev, err := w.Next(500 * time.Millisecond)
		if errors.Is(err, ErrTimeout) {
			break
		}
		mustDo(t, err)
		all = append(all, ev)
	}
	if len(all) != len(written) {
		t.Fatalf("%d events for %d changes", len(all), len(written))
	}
	for i, ev := range all {
		if string(ev.Key) != written[i] || (i > 0 && ev.Index <= all[i-1].Index) {
			t.Fatalf("event %d: %q at %d (previous at %d)", i, ev.Key, ev.Index, all[max(i-1, 0)].Index)
		}
	}
	if all[len(all)-1].Kind != EventDelete {
		t.Fatal("the last change is the delete")
	}
}

func TestClosingTheReplicaEndsTheWatchWithErrClosed(t *testing.T) {
	r, err := Open(Options{Dir: t.TempDir(), Extra: fastRaft()})
	mustDo(t, err)
	events, errc := r.Watch(context.Background(), nil, 0)
	time.Sleep(100 * time.Millisecond)
	mustDo(t, r.Close())
	select {
	case _, ok := <-events:
		if ok {
			t.Fatal("an event from a closed replica")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the feed did not end")
	}
	wantCode(t, <-errc, ErrClosed)
}

func TestHistoryBeyondTheRetainedWindowIsCompacted(t *testing.T) {
	r, err := Open(Options{Dir: t.TempDir(), Extra: with(fastRaft(), "watch_retain_entries", "20")})
	mustDo(t, err)
	defer r.Close()
	// The library prunes the retained window every 1024 entries, so write more entries than
	// that, one by one: concurrent writes would share entries.
	for i := 0; i < 1050; i++ {
		mustDo(t, r.Put([]byte(fmt.Sprintf("z%04d", i)), []byte("v")))
	}
	_, err = r.OpenWatcher(nil, 1)
	wantCode(t, err, ErrCompacted)
	_, errc := r.Watch(context.Background(), nil, 1)
	wantCode(t, <-errc, ErrCompacted)
	s, err := r.Status()
	mustDo(t, err)
	w, err := r.OpenWatcher(nil, s.AppliedIndex-5)
	mustDo(t, err)
	defer w.Close()
	ev, err := w.Next(time.Second)
	if err != nil || string(ev.Key) != "z1044" {
		t.Fatalf("%q, %v", ev.Key, err)
	}
}

func TestAbandonedWatchersAreFreed(t *testing.T) {
	r := openSingle(t)
	mustDo(t, r.Put([]byte("first"), []byte("change")))
	for i := 0; i < 10; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		events, errc := r.Watch(ctx, nil, 1)
		if ev := collect(t, events, 1)[0]; string(ev.Key) != "first" {
			t.Fatalf("%q", ev.Key)
		}
		cancel()
		<-errc
		if _, err := r.OpenWatcher(nil, 1); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	mustDo(t, r.Put([]byte("still"), []byte("works")))
}
