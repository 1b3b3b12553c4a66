// Command etcd-bench starts a fresh 3-member etcd cluster on 127.0.0.1 and
// drives it with the shared closed-loop load through the official v3 client.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"kvrbench/loadgen"
)

const members = 3

func main() {
	cfg := loadgen.RegisterFlags(flag.CommandLine)
	etcdBin := flag.String("etcd-bin", "/usr/bin/etcd", "etcd server binary")
	flag.Parse()
	log.SetPrefix("etcd-bench: ")
	loadgen.Exit(run(cfg, *etcdBin))
}

func run(cfg *loadgen.Config, etcdBin string) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, cancel := loadgen.SignalContext()
	defer cancel()

	// The data dirs are scratch, so a graceful stop would only add etcd's
	// leader-transfer wait (several seconds) to every run.
	var children loadgen.Children
	defer children.Stop(0)
	endpoints, err := startCluster(&children, cfg.Dir, etcdBin)
	if err != nil {
		return err
	}
	leader, err := waitForLeader(ctx, &children, endpoints)
	if err != nil {
		return err
	}
	log.Printf("cluster up, leader at %s", leader)

	// Several connections, as etcd's own benchmark tool uses, so that one
	// HTTP/2 connection is not the bottleneck at high concurrency. All go to
	// the leader so that writes are not forwarded by a follower, matching a
	// client colocated with the leader.
	conns := make([]*clientv3.Client, min(8, (cfg.Concurrency+15)/16))
	for i := range conns {
		if conns[i], err = newClient([]string{leader}); err != nil {
			return err
		}
		defer conns[i].Close()
	}
	pick := func(key []byte) *clientv3.Client { return conns[int(key[len(key)-1])%len(conns)] }

	put := func(ctx context.Context, key, value []byte) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := pick(key).Put(ctx, string(key), string(value))
		return err
	}
	get := func(ctx context.Context, key, _ []byte) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := pick(key).Get(ctx, string(key)) // linearizable by default
		return err
	}
	if err := loadgen.Bench(ctx, cfg, "etcd", put, get); err != nil {
		return err
	}
	return children.Exited()
}

// startCluster launches the members with fresh data dirs; fsync stays at
// etcd's default (on).
func startCluster(children *loadgen.Children, dir, etcdBin string) ([]string, error) {
	ports, err := loadgen.FreePorts(2 * members)
	if err != nil {
		return nil, err
	}
	peer := func(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]) }
	var initial []string
	for i := range members {
		initial = append(initial, fmt.Sprintf("m%d=%s", i+1, peer(i)))
	}
	var endpoints []string
	for i := range members {
		name := fmt.Sprintf("m%d", i+1)
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		data := filepath.Join(dir, "etcd", name)
		if err := os.RemoveAll(data); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(data, 0o700); err != nil {
			return nil, err
		}
		logf, err := os.Create(filepath.Join(dir, "etcd", name+".log"))
		if err != nil {
			return nil, err
		}
		defer logf.Close() // the child holds its own descriptor
		cmd := exec.Command(etcdBin,
			"--name", name,
			"--data-dir", data,
			"--listen-client-urls", client,
			"--advertise-client-urls", client,
			"--listen-peer-urls", peer(i),
			"--initial-advertise-peer-urls", peer(i),
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-token", "kvr-bench",
			"--initial-cluster-state", "new",
			"--logger", "zap",
			"--log-outputs", "stderr",
			"--log-level", "warn",
		)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := children.Start("etcd "+name, cmd); err != nil {
			return nil, err
		}
		endpoints = append(endpoints, client)
	}
	log.Printf("started %d members, logs in %s", members, filepath.Join(dir, "etcd"))
	return endpoints, nil
}

// waitForLeader polls until every member answers and they agree on a leader,
// and returns the leader's client URL.
func waitForLeader(ctx context.Context, children *loadgen.Children, endpoints []string) (string, error) {
	cli, err := newClient(endpoints)
	if err != nil {
		return "", err
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := children.Exited(); err != nil {
			return "", err
		}
		leader, err := findLeader(ctx, cli, endpoints)
		if err == nil {
			return leader, nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("cluster not ready after 30s: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func findLeader(ctx context.Context, cli *clientv3.Client, endpoints []string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var leaderID uint64
	byID := map[uint64]string{}
	for _, ep := range endpoints {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			return "", err
		}
		if st.Leader == 0 || (leaderID != 0 && st.Leader != leaderID) {
			return "", errors.New("no agreed leader yet")
		}
		leaderID = st.Leader
		byID[st.Header.MemberId] = ep
	}
	return byID[leaderID], nil
}

func newClient(endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}
