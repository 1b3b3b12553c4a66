// Package kvr hosts a replica of kvr, an embedded, Raft-replicated key-value store, inside a Go
// process. It wraps the C ABI of libkvr (include/kvr.h) with cgo.
//
//	r, err := kvr.Open(kvr.Options{
//		NodeID: 1, Dir: "data/1",
//		Peers: map[uint64]string{1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"},
//	})
//	if err != nil { ... }
//	defer r.Close()
//	err = r.Put([]byte("k"), []byte("v")) // returns once a majority has it on disk
//	v, err := r.Get([]byte("k"))          // linearizable; errors.Is(err, kvr.ErrNotFound) if absent
//
// cgo finds the header and the library through CGO_CFLAGS and CGO_LDFLAGS (see README.md);
// inside the kvr repository the header is found without help.
package kvr

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -lkvr
#include <stdlib.h>
#include "kvr.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// Options configure Open. Zero fields are left at the library's defaults.
type Options struct {
	// NodeID is this replica's id, unique in the cluster (option node_id; default 1).
	NodeID uint64
	// Dir holds the replica's data (option dir; required).
	Dir string
	// Listen is the host:port to accept peers on (option listen; default: this node's entry in Peers).
	Listen string
	// Peers maps every node id of the cluster, this one included, to its host:port (option
	// peers). Empty means a single-node cluster.
	Peers map[uint64]string
	// Extra sets any other option key, such as "tick_ms", "request_timeout_ms", "cluster_id"
	// or "join". It is applied after the fields above, so it may also override them.
	Extra map[string]string
}

type option struct{ key, value string }

func (o Options) pairs() []option {
	var out []option
	if o.NodeID != 0 {
		out = append(out, option{"node_id", strconv.FormatUint(o.NodeID, 10)})
	}
	if o.Dir != "" {
		out = append(out, option{"dir", o.Dir})
	}
	if o.Listen != "" {
		out = append(out, option{"listen", o.Listen})
	}
	if len(o.Peers) > 0 {
		out = append(out, option{"peers", PeersString(o.Peers)})
	}
	keys := make([]string, 0, len(o.Extra))
	for k := range o.Extra {
		keys = append(keys, k)
	}
	// Sorted, so that the first bad option reported is the same on every run.
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, option{k, o.Extra[k]})
	}
	return out
}

// PeersString formats peers as the peers option expects: "1=host:port,2=host:port" by id.
func PeersString(peers map[uint64]string) string {
	ids := make([]uint64, 0, len(peers))
	for id := range peers {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("%d=%s", id, peers[id])
	}
	return strings.Join(parts, ",")
}

// Consistency chooses how Get reads.
type Consistency int

const (
	// Linearizable reads through Raft ReadIndex: they see every write acknowledged anywhere
	// before the call.
	Linearizable Consistency = C.KVR_READ_LINEARIZABLE
	// Lease reads like Linearizable, but a leader holding its lease answers without a quorum
	// round trip (this assumes bounded clock drift between replicas).
	Lease Consistency = C.KVR_READ_LEASE
	// Stale reads the local state machine only: no network round trip, may miss recent
	// writes made through other replicas.
	Stale Consistency = C.KVR_READ_STALE
)

// Role of a replica in its cluster.
type Role int

// Roles, as in kvr_status_info.role.
const (
	RoleFollower  Role = C.KVR_ROLE_FOLLOWER
	RoleCandidate Role = C.KVR_ROLE_CANDIDATE
	RoleLeader    Role = C.KVR_ROLE_LEADER
	RoleLearner   Role = C.KVR_ROLE_LEARNER
)

func (r Role) String() string {
	switch r {
	case RoleLeader:
		return "leader"
	case RoleCandidate:
		return "candidate"
	case RoleLearner:
		return "learner"
	default:
		return "follower"
	}
}

// Status is a replica's view of its cluster (kvr_status_info).
type Status struct {
	NodeID             uint64
	LeaderID           uint64 // 0 when no leader is known
	Term               uint64
	CommitIndex        uint64
	AppliedIndex       uint64
	LastIndex          uint64
	AppliedIndexAtOpen uint64 // applied index found on disk by Open
	EntriesApplied     uint64 // entries applied by this process since Open
	Role               Role
}

// Replica is one kvr replica hosted by this process. Its methods are safe for concurrent use.
// Writes, linearizable reads and membership changes block for a Raft round trip, at most the
// request_timeout_ms option; each has a ...Context variant that returns when its context ends.
type Replica struct {
	mu sync.RWMutex
	db *C.kvr
}

// Version is the loaded library's version, "MAJOR.MINOR.PATCH".
func Version() string {
	v := uint32(C.kvr_version())
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}

// checkVersion accepts a library of the header's major version and at least its release:
// kvr only adds functions and codes within a major version.
func checkVersion(lib, header uint32) error {
	if lib/1000000 != header/1000000 || lib < header {
		return fmt.Errorf("kvr: library version %d does not fit this package, built against header %d", lib, header)
	}
	return nil
}

var versionOK = sync.OnceValue(func() error {
	return checkVersion(uint32(C.kvr_version()), C.KVR_VERSION_NUMBER)
})

// Open opens (creating or recovering) the replica in opts.Dir and starts it: from then on this
// process takes part in the cluster. Errors: ErrInvalidArgument for unknown keys and bad
// values, ErrBusy when another replica has the directory open, ErrIO, ErrCorrupt.
func Open(opts Options) (*Replica, error) {
	if err := versionOK(); err != nil {
		return nil, err
	}
	o := C.kvr_options_new()
	if o == nil {
		return nil, &Error{Code: CodeIO, Msg: "kvr_options_new: out of memory"}
	}
	defer C.kvr_options_free(o)
	for _, kv := range opts.pairs() {
		if err := setOption(o, kv.key, kv.value); err != nil {
			return nil, err
		}
	}
	var db *C.kvr
	if rc := C.kvr_open(o, &db); rc != C.KVR_OK {
		return nil, &Error{Code: Code(rc), Msg: C.GoString(C.kvr_options_errmsg(o))}
	}
	r := &Replica{db: db}
	runtime.SetFinalizer(r, (*Replica).finalize)
	return r, nil
}

func setOption(o *C.kvr_options, key, value string) error {
	if strings.IndexByte(key, 0) >= 0 || strings.IndexByte(value, 0) >= 0 {
		// C would stop at the NUL and set something other than asked.
		return &Error{Code: CodeInvalidArgument, Msg: fmt.Sprintf("option %q contains a NUL byte", key)}
	}
	k := C.CString(key)
	defer C.free(unsafe.Pointer(k))
	v := C.CString(value)
	defer C.free(unsafe.Pointer(v))
	if rc := C.kvr_options_set(o, k, v); rc != C.KVR_OK {
		return &Error{Code: Code(rc), Msg: C.GoString(C.kvr_options_errmsg(o))}
	}
	return nil
}

// handle returns the C handle, or ErrClosed. The C handle stays a valid pointer after
// kvr_close, so a call racing with Close gets KVR_CLOSED from C rather than a crash.
func (r *Replica) handle() (*C.kvr, error) {
	r.mu.RLock()
	db := r.db
	r.mu.RUnlock()
	if db == nil {
		return nil, &Error{Code: CodeClosed, Msg: "replica is closed"}
	}
	return db, nil
}

// call runs one library call on the open handle and turns its code into an error.
func (r *Replica) call(f func(db *C.kvr) C.int) error {
	db, err := r.handle()
	if err != nil {
		return err
	}
	rc := f(db)
	runtime.KeepAlive(r)
	return r.check(db, rc)
}

func (r *Replica) check(db *C.kvr, rc C.int) error {
	if rc == C.KVR_OK {
		return nil
	}
	return &Error{Code: Code(rc), Msg: C.GoString(C.kvr_errmsg(db))}
}

var emptyBytes [1]byte

// cBytes points C at b without copying. A nil slice becomes NULL; an empty one a valid pointer,
// so that kvr reports "empty" rather than "NULL".
func cBytes(b []byte) (*C.uint8_t, C.size_t) {
	if b == nil {
		return nil, 0
	}
	if len(b) == 0 {
		return (*C.uint8_t)(unsafe.Pointer(&emptyBytes[0])), 0
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0])), C.size_t(len(b))
}

// Put sets key to value. It returns once a majority has the write on disk; every later read
// or watch on this replica sees it. Errors: ErrInvalidArgument (empty or over 511-byte key, value over 4 MiB),
// ErrTimeout (the write may still be applied later), ErrNoLeader, ErrClosed, ErrIO.
func (r *Replica) Put(key, value []byte) error {
	db, err := r.handle()
	if err != nil {
		return err
	}
	k, kl := cBytes(key)
	v, vl := cBytes(value)
	rc := C.kvr_put(db, k, kl, v, vl)
	runtime.KeepAlive(r)
	return r.check(db, rc)
}

// Get reads key linearizably. A missing key gives an error for which
// errors.Is(err, ErrNotFound) holds; an empty value is a non-nil empty slice.
func (r *Replica) Get(key []byte) ([]byte, error) {
	return r.GetWith(key, Linearizable)
}

// GetStale reads key from the local state machine, without a Raft round trip.
func (r *Replica) GetStale(key []byte) ([]byte, error) {
	return r.GetWith(key, Stale)
}

// GetWith reads key with the given consistency.
func (r *Replica) GetWith(key []byte, c Consistency) ([]byte, error) {
	db, err := r.handle()
	if err != nil {
		return nil, err
	}
	k, kl := cBytes(key)
	var buf C.kvr_buf
	rc := C.kvr_get_ex(db, k, kl, C.int(c), &buf)
	runtime.KeepAlive(r)
	if err := r.check(db, rc); err != nil {
		return nil, err
	}
	defer C.kvr_buf_free(&buf)
	return C.GoBytes(unsafe.Pointer(buf.ptr), C.int(buf.len)), nil
}

// Delete removes key; an absent key is not an error. Blocks and fails like Put.
func (r *Replica) Delete(key []byte) error {
	db, err := r.handle()
	if err != nil {
		return err
	}
	k, kl := cBytes(key)
	rc := C.kvr_delete(db, k, kl)
	runtime.KeepAlive(r)
	return r.check(db, rc)
}

// Status reports the replica's view of the cluster. It never blocks.
func (r *Replica) Status() (Status, error) {
	db, err := r.handle()
	if err != nil {
		return Status{}, err
	}
	var s C.kvr_status_info
	rc := C.kvr_status(db, &s)
	runtime.KeepAlive(r)
	if err := r.check(db, rc); err != nil {
		return Status{}, err
	}
	return Status{
		NodeID:             uint64(s.node_id),
		LeaderID:           uint64(s.leader_id),
		Term:               uint64(s.term),
		CommitIndex:        uint64(s.commit_index),
		AppliedIndex:       uint64(s.applied_index),
		LastIndex:          uint64(s.last_index),
		AppliedIndexAtOpen: uint64(s.applied_index_at_open),
		EntriesApplied:     uint64(s.entries_applied),
		Role:               Role(s.role),
	}, nil
}

// PutContext is Put that returns ctx.Err() as soon as ctx is done. The write itself cannot be
// withdrawn: it goes on in the background and may still be applied.
func (r *Replica) PutContext(ctx context.Context, key, value []byte) error {
	key, value = clone(key), clone(value)
	_, err := withContext(ctx, func() ([]byte, error) { return nil, r.Put(key, value) })
	return err
}

// GetContext is Get that returns ctx.Err() as soon as ctx is done.
func (r *Replica) GetContext(ctx context.Context, key []byte) ([]byte, error) {
	key = clone(key)
	return withContext(ctx, func() ([]byte, error) { return r.Get(key) })
}

// DeleteContext is Delete that returns ctx.Err() as soon as ctx is done; like PutContext, the
// delete may still be applied.
func (r *Replica) DeleteContext(ctx context.Context, key []byte) error {
	key = clone(key)
	_, err := withContext(ctx, func() ([]byte, error) { return nil, r.Delete(key) })
	return err
}

// clone keeps the caller free to reuse its buffers while an abandoned call still runs.
func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

// doContext is withContext for calls that return only an error.
func doContext(ctx context.Context, call func() error) error {
	_, err := withContext(ctx, func() ([]byte, error) { return nil, call() })
	return err
}

func withContext(ctx context.Context, call func() ([]byte, error)) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ctx.Done() == nil {
		return call()
	}
	type result struct {
		v   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := call()
		done <- result{v, err}
	}()
	select {
	case res := <-done:
		return res.v, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close stops the replica, closes its connections and releases its directory. Calls blocked
// in other goroutines return ErrClosed. Closing again does nothing and returns nil.
func (r *Replica) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.db == nil {
		return nil
	}
	db := r.db
	r.db = nil
	runtime.SetFinalizer(r, nil)
	return r.check(db, C.kvr_close(db))
}

// finalize releases a replica its owner forgot to Close.
func (r *Replica) finalize() {
	_ = r.Close()
}
