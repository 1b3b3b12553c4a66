// Command dragonboat-bench runs a 3-replica dragonboat shard with an on-disk
// pebble state machine, one NodeHost per OS process on 127.0.0.1, and drives
// it with the shared closed-loop load from an in-process client on replica 1,
// the way an embedded library is used.
//
// Started without --replica-id it is the launcher and replica 1; it re-executes
// itself with --replica-id 2 and 3 for the other two NodeHosts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"
	sm "github.com/lni/dragonboat/v4/statemachine"

	"kvrbench/loadgen"
)

const (
	shardID  = 1
	replicas = 3
)

var smSync bool

func main() {
	cfg := loadgen.RegisterFlags(flag.CommandLine)
	replicaID := flag.Uint64("replica-id", 0, "internal: run only this replica (2 or 3) until stdin closes")
	peers := flag.String("peers", "", "internal: comma-separated raft addresses of replicas 1..3")
	flag.BoolVar(&smSync, "sm-sync", true, "fsync every state machine update batch (as dragonboat's on-disk example does)")
	flag.Parse()
	quietLogs()

	if *replicaID == 0 {
		log.SetPrefix("dragonboat-bench: ")
		loadgen.Exit(launch(cfg))
		return
	}
	log.SetPrefix(fmt.Sprintf("dragonboat-bench[%d]: ", *replicaID))
	loadgen.Exit(serveReplica(cfg.Dir, *replicaID, strings.Split(*peers, ",")))
}

func launch(cfg *loadgen.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, cancel := loadgen.SignalContext()
	defer cancel()

	ports, err := loadgen.FreePorts(replicas)
	if err != nil {
		return err
	}
	addrs := make([]string, replicas)
	for i, p := range ports {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var children loadgen.Children
	defer children.Stop(10 * time.Second)
	for id := 2; id <= replicas; id++ {
		cmd := exec.Command(self, "--dir", cfg.Dir, "--replica-id", fmt.Sprint(id),
			"--peers", strings.Join(addrs, ","), fmt.Sprintf("--sm-sync=%t", smSync))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		// The child exits when this pipe closes, i.e. when the launcher
		// goes away by any means.
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		defer stdin.Close()
		if err := children.Start(fmt.Sprintf("replica %d", id), cmd); err != nil {
			return err
		}
	}

	nh, err := startReplica(cfg.Dir, 1, addrs)
	if err != nil {
		return err
	}
	defer nh.Close()
	if err := leadOnReplica1(ctx, nh, &children); err != nil {
		return err
	}
	log.Printf("shard up, leader is replica 1 at %s", addrs[0])

	session := nh.GetNoOPSession(shardID)
	put := func(ctx context.Context, key, value []byte) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := nh.SyncPropose(ctx, session, encodePut(key, value))
		return err
	}
	get := func(ctx context.Context, key, _ []byte) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := nh.SyncRead(ctx, shardID, key)
		return err
	}
	if err := loadgen.Bench(ctx, cfg, "dragonboat", put, get); err != nil {
		return err
	}
	return children.Exited()
}

// leadOnReplica1 waits for an election and moves leadership to replica 1,
// so the in-process client sits on the leader like an embedded store would,
// and proposals are not forwarded over the network.
func leadOnReplica1(ctx context.Context, nh *dragonboat.NodeHost, children *loadgen.Children) error {
	deadline := time.Now().Add(30 * time.Second)
	// A transfer can be lost (the leader changes meanwhile, or replica 1 is not
	// caught up yet): ask again every two seconds until replica 1 leads.
	var requested time.Time
	for {
		leader, _, ok, err := nh.GetLeaderID(shardID)
		if err != nil {
			return err
		}
		if ok && leader == 1 {
			return nil
		}
		if ok && time.Since(requested) > 2*time.Second {
			if err := nh.RequestLeaderTransfer(shardID, 1); err != nil {
				return err
			}
			requested = time.Now()
		}
		if err := children.Exited(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return errors.New("replica 1 did not become leader within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func serveReplica(dir string, id uint64, addrs []string) error {
	if len(addrs) != replicas {
		return fmt.Errorf("--peers needs %d addresses", replicas)
	}
	ctx, cancel := loadgen.SignalContext()
	defer cancel()
	nh, err := startReplica(dir, id, addrs)
	if err != nil {
		return err
	}
	defer nh.Close()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	<-ctx.Done()
	return nil
}

// startReplica starts a NodeHost with fresh directories. Timing mirrors
// etcd's defaults (100 ms heartbeat, 1 s election); WAL fsync is dragonboat's
// default (on).
func startReplica(dir string, id uint64, addrs []string) (*dragonboat.NodeHost, error) {
	base := filepath.Join(dir, "dragonboat", fmt.Sprint(id))
	if err := os.RemoveAll(base); err != nil {
		return nil, err
	}
	nh, err := dragonboat.NewNodeHost(config.NodeHostConfig{
		NodeHostDir:    filepath.Join(base, "nodehost"),
		WALDir:         filepath.Join(base, "wal"),
		RTTMillisecond: 10,
		RaftAddress:    addrs[id-1],
	})
	if err != nil {
		return nil, err
	}
	members := map[uint64]dragonboat.Target{}
	for i, a := range addrs {
		members[uint64(i+1)] = a
	}
	create := func(uint64, uint64) sm.IOnDiskStateMachine { return newDiskKV(filepath.Join(base, "sm"), smSync) }
	err = nh.StartOnDiskReplica(members, false, create, config.Config{
		ShardID:            shardID,
		ReplicaID:          id,
		HeartbeatRTT:       10,
		ElectionRTT:        100,
		CheckQuorum:        true,
		SnapshotEntries:    10000,
		CompactionOverhead: 5000,
	})
	if err != nil {
		nh.Close()
		return nil, err
	}
	return nh, nil
}

// quietLogs keeps stderr to problems; elections and the plaintext-transport
// notice are logged as warnings by raft and config.
func quietLogs() {
	for _, name := range []string{"dragonboat", "rsm", "transport", "logdb", "raftpb", "settings", "grpc"} {
		logger.GetLogger(name).SetLevel(logger.WARNING)
	}
	logger.GetLogger("raft").SetLevel(logger.ERROR)
	logger.GetLogger("config").SetLevel(logger.ERROR)
}
