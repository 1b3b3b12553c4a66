package kvr

/*
#include <stdlib.h>
#include "kvr.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"unsafe"
)

// Member is one member of the cluster, as listed by Members.
type Member struct {
	ID   uint64 `json:"id"`
	Addr string `json:"addr"`
	Role string `json:"role"` // "voter" or "learner"
}

// AddNode adds node id, listening on addr (host:port), as a voter, or promotes a learner. The
// new replica is opened with the option join=true on an empty directory and catches up from
// the leader. Callable on any replica; blocks until the change is applied here. Errors:
// ErrInvalidArgument (id 0, bad address, an id removed before), ErrTimeout, ErrNoLeader,
// ErrClosed, ErrRemoved.
func (r *Replica) AddNode(id uint64, addr string) error {
	return r.withString("addr", addr, func(db *C.kvr, a *C.char) C.int { return C.kvr_add_node(db, C.uint64_t(id), a) })
}

// AddNodeContext is AddNode that returns ctx.Err() as soon as ctx is done; the change may
// still be applied.
func (r *Replica) AddNodeContext(ctx context.Context, id uint64, addr string) error {
	return doContext(ctx, func() error { return r.AddNode(id, addr) })
}

// AddLearner adds node id, listening on addr, as a learner: it receives the log but does not
// vote. Promote it later with AddNode. Blocks and fails like AddNode.
func (r *Replica) AddLearner(id uint64, addr string) error {
	return r.withString("addr", addr, func(db *C.kvr, a *C.char) C.int { return C.kvr_add_learner(db, C.uint64_t(id), a) })
}

// AddLearnerContext is AddLearner that returns ctx.Err() as soon as ctx is done.
func (r *Replica) AddLearnerContext(ctx context.Context, id uint64, addr string) error {
	return doContext(ctx, func() error { return r.AddLearner(id, addr) })
}

// RemoveNode removes node id for good (its id can never be reused); removing the leader hands
// leadership to another voter first. The removed replica's calls then fail with ErrRemoved.
// Errors: ErrInvalidArgument (not a member, or the only voter), ErrTimeout, ErrNoLeader,
// ErrClosed, ErrRemoved.
func (r *Replica) RemoveNode(id uint64) error {
	return r.call(func(db *C.kvr) C.int { return C.kvr_remove_node(db, C.uint64_t(id)) })
}

// RemoveNodeContext is RemoveNode that returns ctx.Err() as soon as ctx is done.
func (r *Replica) RemoveNodeContext(ctx context.Context, id uint64) error {
	return doContext(ctx, func() error { return r.RemoveNode(id) })
}

// TransferLeader asks the cluster to make node id the leader and returns once this replica
// sees it lead. Errors: ErrTimeout, ErrClosed, ErrRemoved.
func (r *Replica) TransferLeader(id uint64) error {
	return r.call(func(db *C.kvr) C.int { return C.kvr_transfer_leader(db, C.uint64_t(id)) })
}

// TransferLeaderContext is TransferLeader that returns ctx.Err() as soon as ctx is done.
func (r *Replica) TransferLeaderContext(ctx context.Context, id uint64) error {
	return doContext(ctx, func() error { return r.TransferLeader(id) })
}

// Members lists the members, read linearizably, sorted by id.
func (r *Replica) Members() ([]Member, error) {
	raw, err := r.MembersJSON()
	if err != nil {
		return nil, err
	}
	var ms []Member
	if err := json.Unmarshal(raw, &ms); err != nil {
		return nil, fmt.Errorf("kvr: members: %w", err)
	}
	return ms, nil
}

// MembersContext is Members that returns ctx.Err() as soon as ctx is done.
func (r *Replica) MembersContext(ctx context.Context) ([]Member, error) {
	var ms []Member
	err := doContext(ctx, func() (err error) {
		ms, err = r.Members()
		return err
	})
	if err != nil {
		return nil, err
	}
	return ms, nil
}

// MembersJSON is Members as the library's JSON text, unchanged:
// [{"id":1,"addr":"127.0.0.1:7001","role":"voter"},...].
func (r *Replica) MembersJSON() ([]byte, error) {
	return r.takeJSON(func(db *C.kvr, b *C.kvr_buf) C.int { return C.kvr_members(db, b) })
}

// Stats is a replica's statistics (kvr_stats). Peers is filled on the leader only.
type Stats struct {
	NodeID             uint64         `json:"node_id"`
	Role               string         `json:"role"` // "leader", "follower", "candidate" or "learner"
	LeaderID           uint64         `json:"leader_id"`
	Term               uint64         `json:"term"`
	CommitIndex        uint64         `json:"commit_index"`
	AppliedIndex       uint64         `json:"applied_index"`
	FirstIndex         uint64         `json:"first_index"`
	LastIndex          uint64         `json:"last_index"`
	LogEntries         uint64         `json:"log_entries"`
	LogBytes           uint64         `json:"log_bytes"`
	DataBytes          uint64         `json:"data_bytes"`
	SnapshotIndex      uint64         `json:"snapshot_index"`
	SnapshotsTaken     uint64         `json:"snapshots_taken"`
	SnapshotsInstalled uint64         `json:"snapshots_installed"`
	SnapshotsSent      uint64         `json:"snapshots_sent"`
	ProposalsTotal     uint64         `json:"proposals_total"`
	ProposalsPerSec    float64        `json:"proposals_per_s"`
	ApplyBatches       uint64         `json:"apply_batches"`
	ApplyBatchAvg      float64        `json:"apply_batch_avg"`
	ApplyBatchMax      uint64         `json:"apply_batch_max"`
	EntriesApplied     uint64         `json:"entries_applied"`
	Duplicates         uint64         `json:"duplicates"`
	LogWrites          uint64         `json:"log_writes"`        // log appends, one fdatasync each
	LogWriteMicros     uint64         `json:"log_write_us"`      // time spent in log appends
	ApplyCommitMicros  uint64         `json:"apply_commit_us"`   // time spent committing apply batches
	LeaseReadsLocal    uint64         `json:"lease_reads_local"` // lease reads answered without the raft thread
	ReadRounds         uint64         `json:"read_rounds"`       // ReadIndex rounds, each serving many reads
	VotesHeld          uint64         `json:"votes_held"`        // campaigns ignored just after a restart
	Peers              []PeerStats    `json:"peers"`
	Transport          TransportStats `json:"transport"`
}

// PeerStats is the leader's view of one follower's replication progress.
type PeerStats struct {
	ID         uint64 `json:"id"`
	MatchIndex uint64 `json:"match_index"`
	NextIndex  uint64 `json:"next_index"`
	Lag        uint64 `json:"lag"` // entries behind the leader's last index
	State      string `json:"state"`
}

// TransportStats counts the messages of this replica's transport.
type TransportStats struct {
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	Dropped  uint64 `json:"dropped"`
	Refused  uint64 `json:"refused"`
}

// Stats reports this replica's statistics. It never blocks on the network. Fields newer than
// this package are left out; StatsJSON has them all.
func (r *Replica) Stats() (Stats, error) {
	raw, err := r.StatsJSON()
	if err != nil {
		return Stats{}, err
	}
	var s Stats
	if err := json.Unmarshal(raw, &s); err != nil {
		return Stats{}, fmt.Errorf("kvr: stats: %w", err)
	}
	return s, nil
}

// StatsJSON is Stats as the library's JSON text, unchanged.
func (r *Replica) StatsJSON() ([]byte, error) {
	return r.takeJSON(func(db *C.kvr, b *C.kvr_buf) C.int { return C.kvr_stats(db, b) })
}

// Backup writes a consistent copy of the state machine to the new file path while writes go
// on. Seed a new cluster from it by opening its founding replicas on empty directories with
// the option restore_from=path. Errors: ErrInvalidArgument (the file exists), ErrIO, ErrClosed.
func (r *Replica) Backup(path string) error {
	return r.withString("path", path, func(db *C.kvr, p *C.char) C.int { return C.kvr_backup(db, p) })
}

// withString runs f with s as a C string.
func (r *Replica) withString(what, s string, f func(db *C.kvr, cs *C.char) C.int) error {
	if strings.IndexByte(s, 0) >= 0 {
		// C would stop at the NUL and act on something other than asked.
		return &Error{Code: CodeInvalidArgument, Msg: what + " contains a NUL byte"}
	}
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	return r.call(func(db *C.kvr) C.int { return f(db, cs) })
}

// takeJSON runs f, which fills a buffer on success, and returns a copy of the buffer.
func (r *Replica) takeJSON(f func(db *C.kvr, b *C.kvr_buf) C.int) ([]byte, error) {
	var buf C.kvr_buf
	if err := r.call(func(db *C.kvr) C.int { return f(db, &buf) }); err != nil {
		return nil, err
	}
	return takeBuf(&buf), nil
}
