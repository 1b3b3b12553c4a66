package kvr

/*
#include <stdlib.h>
#include "kvr.h"
*/
import "C"

import (
	"context"
	"runtime"
	"time"
	"unsafe"
)

// PutTTL sets key to value for ttl, rounded up to a whole millisecond. Afterwards no read
// returns it, and the leader deletes it through the log, so every replica deletes it at the
// same index (watchers see an EventExpire). A later Put clears the TTL. Blocks and fails like
// Put; a ttl of zero or less, or a key over 503 bytes, is ErrInvalidArgument.
func (r *Replica) PutTTL(key, value []byte, ttl time.Duration) error {
	ms := ttlMillis(ttl)
	return r.call(func(db *C.kvr) C.int {
		k, kl := cBytes(key)
		v, vl := cBytes(value)
		return C.kvr_put_ttl(db, k, kl, v, vl, C.uint64_t(ms))
	})
}

// ttlMillis rounds up, so that a positive ttl never becomes the invalid 0.
func ttlMillis(ttl time.Duration) uint64 {
	if ttl <= 0 {
		return 0
	}
	return uint64((ttl + time.Millisecond - 1) / time.Millisecond)
}

// PutTTLContext is PutTTL that returns ctx.Err() as soon as ctx is done; like PutContext, the
// write may still be applied.
func (r *Replica) PutTTLContext(ctx context.Context, key, value []byte, ttl time.Duration) error {
	key, value = clone(key), clone(value)
	return doContext(ctx, func() error { return r.PutTTL(key, value, ttl) })
}

// OpKind is the kind of a BatchOp.
type OpKind int

// Batch operations, as in kvr_batch_op.op.
const (
	OpPut    OpKind = C.KVR_OP_PUT
	OpDelete OpKind = C.KVR_OP_DELETE
)

// BatchOp is one write of Batch. Value is ignored for OpDelete.
type BatchOp struct {
	Op    OpKind
	Key   []byte
	Value []byte
}

// PutOp is the BatchOp that sets key to value.
func PutOp(key, value []byte) BatchOp { return BatchOp{Op: OpPut, Key: key, Value: value} }

// DeleteOp is the BatchOp that deletes key.
func DeleteOp(key []byte) BatchOp { return BatchOp{Op: OpDelete, Key: key} }

// Batch applies ops in order, all or none: one Raft entry, one LMDB transaction. It blocks
// like Put. When any op is invalid (unknown Op, bad key or value, more than 10000 ops or
// 16 MiB in all) it returns ErrInvalidArgument and writes nothing.
func (r *Replica) Batch(ops []BatchOp) error {
	// The op array lives in Go memory and points at the callers' slices; cgo allows that for
	// the length of the call once those slices are pinned.
	var pinner runtime.Pinner
	defer pinner.Unpin()
	cops := make([]C.kvr_batch_op, len(ops))
	for i, op := range ops {
		k, kl := cBytes(op.Key)
		var v *C.uint8_t
		var vl C.size_t
		if op.Op != OpDelete {
			v, vl = cBytes(op.Value)
		}
		for _, p := range []*C.uint8_t{k, v} {
			if p != nil {
				pinner.Pin(p)
			}
		}
		cops[i] = C.kvr_batch_op{op: C.int(op.Op), key: k, key_len: kl, val: v, val_len: vl}
	}
	return r.call(func(db *C.kvr) C.int {
		var first *C.kvr_batch_op
		if len(cops) > 0 {
			first = &cops[0]
		}
		return C.kvr_batch(db, first, C.size_t(len(cops)))
	})
}

// BatchContext is Batch that returns ctx.Err() as soon as ctx is done; the batch may still be
// applied, whole.
func (r *Replica) BatchContext(ctx context.Context, ops []BatchOp) error {
	copied := make([]BatchOp, len(ops))
	for i, op := range ops {
		copied[i] = BatchOp{Op: op.Op, Key: clone(op.Key), Value: clone(op.Value)}
	}
	return doContext(ctx, func() error { return r.Batch(copied) })
}

// CAS sets key to newValue only if it holds expected now — or, when expectAbsent is true,
// only if it is absent (expected is then ignored). A nil expected is the empty value, not
// "absent". When the key holds something else, nothing is written and
// errors.Is(err, ErrCASFailed) holds. Linearizable; blocks and fails like Put otherwise.
func (r *Replica) CAS(key, expected, newValue []byte, expectAbsent bool) error {
	absent := C.int(0)
	if expectAbsent {
		absent = 1
	}
	return r.call(func(db *C.kvr) C.int {
		k, kl := cBytes(key)
		e, el := cBytes(expected)
		n, nl := cBytes(newValue)
		return C.kvr_cas(db, k, kl, e, el, absent, n, nl)
	})
}

// CASContext is CAS that returns ctx.Err() as soon as ctx is done; the swap may still happen.
func (r *Replica) CASContext(ctx context.Context, key, expected, newValue []byte, expectAbsent bool) error {
	key, expected, newValue = clone(key), clone(expected), clone(newValue)
	return doContext(ctx, func() error { return r.CAS(key, expected, newValue, expectAbsent) })
}

// Append appends value to the value of key (an absent key counts as empty), atomically. It is
// ErrInvalidArgument if the result would exceed 4 MiB. Blocks and fails like Put otherwise.
func (r *Replica) Append(key, value []byte) error {
	return r.call(func(db *C.kvr) C.int {
		k, kl := cBytes(key)
		v, vl := cBytes(value)
		return C.kvr_append(db, k, kl, v, vl)
	})
}

// AppendContext is Append that returns ctx.Err() as soon as ctx is done; the append may still
// be applied.
func (r *Replica) AppendContext(ctx context.Context, key, value []byte) error {
	key, value = clone(key), clone(value)
	return doContext(ctx, func() error { return r.Append(key, value) })
}

// KV is one pair of a scan.
type KV struct {
	Key   []byte
	Value []byte
}

// Scan reads up to limit (1..10000) pairs with keys in [start, end), in key order, with
// consistency c; an empty start or end leaves that side open. next is the key to pass as start
// of the following call when the limit cut the range short, nil when the range is done:
//
//	for start := []byte(nil); ; {
//		kvs, next, err := r.Scan(start, end, 1000, kvr.Linearizable)
//		// use kvs ...
//		if err != nil || next == nil {
//			break
//		}
//		start = next
//	}
//
// Each call is a read of its own: writes between calls may show in later pages.
func (r *Replica) Scan(start, end []byte, limit int, c Consistency) (kvs []KV, next []byte, err error) {
	var it *C.kvr_iter
	err = r.call(func(db *C.kvr) C.int {
		s, sl := cBytes(start)
		e, el := cBytes(end)
		return C.kvr_scan(db, s, sl, e, el, scanLimit(limit), C.int(c), &it)
	})
	if err != nil {
		return nil, nil, err
	}
	return drain(it)
}

// ScanPrefix is Scan over the keys that start with prefix (all keys when it is empty). Resume
// it with Scan(next, PrefixEnd(prefix), ...).
func (r *Replica) ScanPrefix(prefix []byte, limit int, c Consistency) (kvs []KV, next []byte, err error) {
	var it *C.kvr_iter
	err = r.call(func(db *C.kvr) C.int {
		p, pl := cBytes(prefix)
		return C.kvr_scan_prefix(db, p, pl, scanLimit(limit), C.int(c), &it)
	})
	if err != nil {
		return nil, nil, err
	}
	return drain(it)
}

// scanLimit lets the library reject a negative limit as it rejects 0, rather than wrap it.
func scanLimit(limit int) C.size_t {
	if limit < 0 {
		return 0
	}
	return C.size_t(limit)
}

// PrefixEnd is the smallest key greater than every key that starts with prefix: the end of a
// Scan over that prefix. It is nil, meaning no upper bound, when prefix is empty or all 0xff.
func PrefixEnd(prefix []byte) []byte {
	end := clone(prefix)
	for len(end) > 0 && end[len(end)-1] == 0xff {
		end = end[:len(end)-1]
	}
	if len(end) == 0 {
		return nil
	}
	end[len(end)-1]++
	return end
}

// drain copies the pairs and the continuation out of an iterator, then frees it.
func drain(it *C.kvr_iter) ([]KV, []byte, error) {
	defer C.kvr_iter_free(it)
	var kvs []KV
	for {
		var k, v C.kvr_buf
		rc := C.kvr_iter_next(it, &k, &v)
		if rc == C.KVR_NOT_FOUND {
			break
		}
		if rc != C.KVR_OK {
			return nil, nil, cursorError("scan", rc)
		}
		kvs = append(kvs, KV{Key: takeBuf(&k), Value: takeBuf(&v)})
	}
	var next C.kvr_buf
	switch rc := C.kvr_iter_continuation(it, &next); rc {
	case C.KVR_OK:
		return kvs, takeBuf(&next), nil
	case C.KVR_NOT_FOUND:
		return kvs, nil, nil
	default:
		return nil, nil, cursorError("scan", rc)
	}
}

// takeBuf copies a buffer returned by kvr into Go memory, then frees it.
func takeBuf(b *C.kvr_buf) []byte {
	defer C.kvr_buf_free(b)
	return C.GoBytes(unsafe.Pointer(b.ptr), C.int(b.len))
}

// cursorError describes a failure of an iterator or watcher, which have no error text of
// their own.
func cursorError(what string, rc C.int) error {
	return &Error{Code: Code(rc), Msg: what + ": " + Code(rc).Text()}
}
