package kvr

/*
#include "kvr.h"
*/
import "C"

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// EventKind is what a change-feed Event did to its key.
type EventKind int

// Event kinds, as in kvr_event.kind.
const (
	EventPut    EventKind = C.KVR_EVENT_PUT
	EventDelete EventKind = C.KVR_EVENT_DELETE
	EventExpire EventKind = C.KVR_EVENT_EXPIRE
)

func (k EventKind) String() string {
	switch k {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	case EventExpire:
		return "expire"
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// Event is one change of the feed. Resume a feed after it with fromIndex = Index + 1.
type Event struct {
	Index uint64 // Raft index of the entry that made the change
	Kind  EventKind
	Key   []byte
	Value []byte // the value after the change; empty unless Kind is EventPut
}

// watchSlice bounds one wait inside the library, hence how long Watch takes to notice that
// its context is done.
const watchSlice = 100 * time.Millisecond

// Watcher is a cursor on the change feed. Next may be called from one goroutine at a time;
// Close from any.
type Watcher struct {
	mu sync.Mutex
	w  *C.kvr_watcher
}

// OpenWatcher opens a cursor on the change feed of the keys that start with prefix (all keys
// when empty). fromIndex 0 starts with the next change; otherwise the changes of entries at or
// after fromIndex come first, also after a restart. Errors: ErrCompacted when those changes
// left the retained window (options watch_retain_entries and watch_retain_bytes), ErrClosed.
func (r *Replica) OpenWatcher(prefix []byte, fromIndex uint64) (*Watcher, error) {
	var w *C.kvr_watcher
	err := r.call(func(db *C.kvr) C.int {
		p, pl := cBytes(prefix)
		return C.kvr_watch(db, p, pl, C.uint64_t(fromIndex), &w)
	})
	if err != nil {
		return nil, err
	}
	wt := &Watcher{w: w}
	runtime.SetFinalizer(wt, (*Watcher).Close)
	return wt, nil
}

// Next waits up to timeout for the next change. Errors: ErrTimeout when none came in time (try
// again), ErrCompacted when the cursor fell behind the retained window, ErrClosed when the
// replica or the watcher was closed.
func (w *Watcher) Next(timeout time.Duration) (Event, error) {
	ms := timeout.Milliseconds()
	if ms < 0 {
		ms = 0
	} else if ms > int64(^uint32(0)) {
		ms = int64(^uint32(0))
	}
	// Held across the call so that Close never frees the cursor under it.
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.w == nil {
		return Event{}, &Error{Code: CodeClosed, Msg: "watcher is closed"}
	}
	var ev C.kvr_event
	rc := C.kvr_watch_next(w.w, C.uint32_t(ms), &ev)
	if rc != C.KVR_OK {
		return Event{}, cursorError("watch", rc)
	}
	defer C.kvr_event_free(&ev)
	return Event{
		Index: uint64(ev.index),
		Kind:  EventKind(ev.kind),
		Key:   C.GoBytes(unsafe.Pointer(ev.key.ptr), C.int(ev.key.len)),
		Value: C.GoBytes(unsafe.Pointer(ev.value.ptr), C.int(ev.value.len)),
	}, nil
}

// Close frees the cursor; it waits for a Next in progress to return. Closing again does
// nothing.
func (w *Watcher) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.w != nil {
		C.kvr_watch_free(w.w)
		w.w = nil
		runtime.SetFinalizer(w, nil)
	}
	return nil
}

// Watch streams the change feed of the keys that start with prefix (all keys when empty) on a
// channel, in log order; fromIndex is as for OpenWatcher. The cursor is opened before Watch
// returns, so with fromIndex 0 no change made after the call is missed.
//
// The events channel is closed when the watch ends; the error channel then yields why, once:
// ctx.Err() when ctx was cancelled (the way to stop a watch), ErrCompacted or ErrClosed
// otherwise. The cursor is freed when the watch ends, within about 100 ms of ctx being done.
//
//	events, errc := r.Watch(ctx, []byte("user/"), 0)
//	for ev := range events {
//		...
//	}
//	err := <-errc
func (r *Replica) Watch(ctx context.Context, prefix []byte, fromIndex uint64) (<-chan Event, <-chan error) {
	events := make(chan Event)
	errc := make(chan error, 1)
	w, err := r.OpenWatcher(prefix, fromIndex)
	if err != nil {
		errc <- err
		close(events)
		close(errc)
		return events, errc
	}
	go func() {
		err := pump(ctx, w, events)
		w.Close()
		errc <- err
		close(events)
		close(errc)
	}()
	return events, errc
}

// pump sends the watcher's events until ctx is done or the watch fails.
func pump(ctx context.Context, w *Watcher, events chan<- Event) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		ev, err := w.Next(watchSlice)
		if errors.Is(err, ErrTimeout) {
			continue
		}
		if err != nil {
			return err
		}
		select {
		case events <- ev:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
