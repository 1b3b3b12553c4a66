package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/cockroachdb/pebble"
	sm "github.com/lni/dragonboat/v4/statemachine"
)

// Data keys and the applied-index key live in disjoint prefixes of one pebble
// DB, so a single batch updates both and a snapshot carries both.
var (
	appliedKey = []byte("m/applied")
	dataPrefix = []byte("d/")
)

func dataKey(k []byte) []byte {
	return append(append(make([]byte, 0, len(dataPrefix)+len(k)), dataPrefix...), k...)
}

// encodePut frames a put as uvarint(len(key)) key value.
func encodePut(key, value []byte) []byte {
	cmd := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+len(key)+len(value)), uint64(len(key)))
	return append(append(cmd, key...), value...)
}

func decodePut(cmd []byte) (key, value []byte, err error) {
	n, w := binary.Uvarint(cmd)
	if w <= 0 || uint64(len(cmd)-w) < n {
		return nil, nil, errors.New("malformed put")
	}
	return cmd[w : w+int(n)], cmd[w+int(n):], nil
}

// diskKV is an IOnDiskStateMachine over pebble.
type diskKV struct {
	dir string
	wo  *pebble.WriteOptions
	mu  sync.RWMutex // Lookup may run concurrently with Close
	db  *pebble.DB
}

func newDiskKV(dir string, sync bool) *diskKV {
	return &diskKV{dir: dir, wo: &pebble.WriteOptions{Sync: sync}}
}

func (s *diskKV) Open(<-chan struct{}) (uint64, error) {
	db, err := pebble.Open(s.dir, &pebble.Options{})
	if err != nil {
		return 0, err
	}
	s.db = db
	v, closer, err := db.Get(appliedKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	return binary.BigEndian.Uint64(v), nil
}

// Update applies the entries and the last index in one pebble batch, so the
// state machine never runs ahead of or behind the index Open reports. The
// batch is fsynced as in dragonboat's on-disk example unless --sm-sync=false,
// in which case Sync makes it durable before dragonboat compacts the log.
func (s *diskKV) Update(ents []sm.Entry) ([]sm.Entry, error) {
	b := s.db.NewBatch()
	defer b.Close()
	for i, e := range ents {
		k, v, err := decodePut(e.Cmd)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", e.Index, err)
		}
		if err := b.Set(dataKey(k), v, nil); err != nil {
			return nil, err
		}
		ents[i].Result = sm.Result{Value: uint64(len(e.Cmd))}
	}
	if err := b.Set(appliedKey, binary.BigEndian.AppendUint64(nil, ents[len(ents)-1].Index), nil); err != nil {
		return nil, err
	}
	if err := b.Commit(s.wo); err != nil {
		return nil, err
	}
	return ents, nil
}

func (s *diskKV) Lookup(q interface{}) (interface{}, error) {
	key, ok := q.([]byte)
	if !ok {
		return nil, fmt.Errorf("unsupported query %T", q)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return nil, errors.New("state machine closed")
	}
	v, closer, err := s.db.Get(dataKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return []byte(nil), nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}

func (s *diskKV) Sync() error {
	if s.wo.Sync {
		return nil
	}
	return s.db.LogData(nil, pebble.Sync) // an empty synced record fsyncs the WAL
}

func (s *diskKV) PrepareSnapshot() (interface{}, error) { return s.db.NewSnapshot(), nil }

// SaveSnapshot streams every key of the point-in-time view as
// uvarint-framed key/value pairs.
func (s *diskKV) SaveSnapshot(ctx interface{}, w io.Writer, done <-chan struct{}) error {
	snap := ctx.(*pebble.Snapshot)
	defer snap.Close()
	it := snap.NewIter(nil)
	defer it.Close()
	bw := bufio.NewWriter(w)
	for n, ok := 0, it.First(); ok; n, ok = n+1, it.Next() {
		if n%1024 == 0 && isDone(done) {
			return sm.ErrSnapshotStopped
		}
		for _, b := range [][]byte{it.Key(), it.Value()} {
			if _, err := bw.Write(binary.AppendUvarint(nil, uint64(len(b)))); err != nil {
				return err
			}
			if _, err := bw.Write(b); err != nil {
				return err
			}
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	return bw.Flush()
}

// RecoverFromSnapshot replaces the whole content in a single batch, so a
// crash mid-recovery leaves the previous state intact.
func (s *diskKV) RecoverFromSnapshot(r io.Reader, done <-chan struct{}) error {
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange([]byte{}, []byte{0xff}, nil); err != nil {
		return err
	}
	br := bufio.NewReader(r)
	for n := 0; ; n++ {
		if n%1024 == 0 && isDone(done) {
			return sm.ErrSnapshotStopped
		}
		k, err := readFrame(br)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		v, err := readFrame(br)
		if err != nil {
			return fmt.Errorf("snapshot truncated: %w", err)
		}
		if err := b.Set(k, v, nil); err != nil {
			return err
		}
	}
	return b.Commit(pebble.Sync)
}

func readFrame(r *bufio.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func isDone(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

func (s *diskKV) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	return err
}
