package kvr

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// snappy is fastRaft with frequent snapshots and a short log, so that a joiner must catch up
// by snapshot.
func snappy() map[string]string {
	return with(fastRaft(), "snapshot_entries", "200", "compaction_margin", "50")
}

// testCluster is nodes 1 and 2 in this process and node 3 in a child process.
type testCluster struct {
	t     *testing.T
	tmp   string
	peers map[uint64]string
	nodes map[uint64]*Replica
	host  *hostProc
}

func startCluster(t *testing.T) *testCluster {
	t.Helper()
	c := &testCluster{t: t, tmp: t.TempDir(), peers: peersFor(freePorts(t, 3)), nodes: map[uint64]*Replica{}}
	c.host = newHost(t, c.options(3))
	c.host.start()
	for id := uint64(1); id <= 2; id++ {
		c.open(id, c.options(id))
	}
	t.Cleanup(func() {
		for _, r := range c.nodes {
			r.Close()
		}
	})
	waitFor(t, "an agreed leader", func() bool { return c.leader() != 0 })
	return c
}

func (c *testCluster) options(id uint64) Options {
	return Options{NodeID: id, Dir: filepath.Join(c.tmp, fmt.Sprintf("n%d", id)), Peers: c.peers, Extra: snappy()}
}

func (c *testCluster) open(id uint64, opts Options) *Replica {
	c.t.Helper()
	r, err := Open(opts)
	mustDo(c.t, err)
	c.nodes[id] = r
	return r
}

// joiner opens node id on an empty directory with join=true; it returns the node and its address.
func (c *testCluster) joiner(id uint64) (*Replica, string) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePorts(c.t, 1)[0])
	opts := Options{NodeID: id, Dir: filepath.Join(c.tmp, fmt.Sprintf("n%d", id)), Listen: addr, Extra: with(snappy(), "join", "true")}
	return c.open(id, opts), addr
}

// leader is the leader id every running node agrees on, or 0.
func (c *testCluster) leader() uint64 {
	id := c.host.status("leader")
	for _, r := range c.nodes {
		if s, err := r.Status(); err != nil || s.LeaderID != id {
			return 0
		}
	}
	return id
}

// writeKeys writes k-0000..k-{n-1} from 16 goroutines spread over the in-process nodes.
func (c *testCluster) writeKeys(n int) {
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := c.nodes[uint64(g%2+1)]
			for i := g; i < n; i += 16 {
				if err := r.Put([]byte(fmt.Sprintf("k-%04d", i)), []byte(fmt.Sprint("v", i))); err != nil {
					c.t.Error(err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
}

func roles(t *testing.T, r *Replica) map[uint64]string {
	t.Helper()
	ms, err := r.Members()
	mustDo(t, err)
	out := map[uint64]string{}
	for _, m := range ms {
		out[m.ID] = m.Role
	}
	return out
}

func TestJoinerCatchesUpBySnapshotThenAnOldNodeIsRemovedAndLeadershipMoves(t *testing.T) {
	c := startCluster(t)
	n1, n2 := c.nodes[1], c.nodes[2]
	c.writeKeys(3000)
	if s, _ := n1.Stats(); s.FirstIndex <= 250 {
		t.Fatalf("the log was not compacted: %+v", s)
	}

	n4, addr4 := c.joiner(4)
	mustDo(t, n1.AddNodeContext(context.Background(), 4, addr4))
	s1, _ := n1.Status()
	waitFor(t, "node 4 catching up", func() bool {
		s, _ := n4.Status()
		return s.AppliedIndex >= s1.CommitIndex
	})
	if s, _ := n4.Stats(); s.SnapshotsInstalled == 0 {
		t.Fatalf("node 4 caught up without a snapshot: %+v", s)
	}
	for _, i := range []int{0, 2999} {
		if v, err := n4.GetStale([]byte(fmt.Sprintf("k-%04d", i))); err != nil || string(v) != fmt.Sprint("v", i) {
			t.Fatalf("node 4 k-%04d = %q, %v", i, v, err)
		}
	}
	mustDo(t, n4.Put([]byte("from-4"), []byte("joined")))
	wantValue(t, n2, "from-4", "joined")

	ms, err := n4.Members()
	mustDo(t, err)
	want := []Member{{1, c.peers[1], "voter"}, {2, c.peers[2], "voter"}, {3, c.peers[3], "voter"}, {4, addr4, "voter"}}
	if fmt.Sprint(ms) != fmt.Sprint(want) {
		t.Fatalf("members %+v", ms)
	}
	raw, _ := n1.MembersJSON()
	if got := c.host.do("members"); got != string(raw) {
		t.Fatalf("node 3 lists %s, node 1 %s", got, raw)
	}

	// Remove node 2: the others go on, node 2 learns it was removed, its id is gone for good.
	mustDo(t, n4.RemoveNodeContext(context.Background(), 2))
	if r := roles(t, n1); len(r) != 3 || r[2] != "" {
		t.Fatalf("members after removal: %v", r)
	}
	mustDo(t, n1.Put([]byte("after-remove"), []byte("1")))
	if got := c.host.do("get after-remove"); got != "1" {
		t.Fatal(got)
	}
	waitFor(t, "node 2 refusing work", func() bool {
		return errors.Is(n2.Put([]byte("x"), []byte("y")), ErrRemoved)
	})
	wantCode(t, n2.AddNode(9, "127.0.0.1:1"), ErrRemoved)
	wantCode(t, n1.AddNode(2, c.peers[2]), ErrInvalidArgument)

	// Leadership moves where it is asked to, from any replica. TransferLeader returns as soon
	// as the asking replica believes the target leads, and a stale belief counts: node 3 is
	// asked only once it follows node 4.
	mustDo(t, n1.TransferLeaderContext(context.Background(), 4))
	if s, _ := n1.Status(); s.LeaderID != 4 {
		t.Fatalf("node 1 sees leader %d", s.LeaderID)
	}
	waitFor(t, "node 3 following node 4", func() bool { return c.host.status("leader") == 4 })
	if got := c.host.do("transfer 1"); got != "OK" {
		t.Fatal(got)
	}
	waitFor(t, "node 4 following node 1", func() bool {
		s, _ := n4.Status()
		return s.LeaderID == 1
	})
	mustDo(t, n4.Put([]byte("after-transfer"), []byte("2")))
	if v, err := n1.GetWith([]byte("after-transfer"), Lease); err != nil || string(v) != "2" {
		t.Fatalf("%q, %v", v, err)
	}

	// A learner receives the log without voting, then is promoted.
	n5, addr5 := c.joiner(5)
	mustDo(t, n4.AddLearnerContext(context.Background(), 5, addr5))
	if r := roles(t, n1); r[5] != "learner" {
		t.Fatalf("%v", r)
	}
	waitFor(t, "the learner's copy", func() bool {
		v, _ := n5.GetStale([]byte("after-transfer"))
		return string(v) == "2"
	})
	waitFor(t, "node 5 reporting its role", func() bool {
		s, _ := n5.Status()
		return s.Role == RoleLearner
	})
	mustDo(t, n1.AddNode(5, addr5))
	if r := roles(t, n5); r[5] != "voter" {
		t.Fatalf("%v", r)
	}
	waitFor(t, "node 5 voting", func() bool {
		s, _ := n5.Status()
		return s.Role == RoleFollower
	})
}

func TestReplicasAgreeOnCASTTLReadsAndTheChangeFeed(t *testing.T) {
	c := startCluster(t)
	n1, n2 := c.nodes[1], c.nodes[2]

	// CAS contention from two replicas: exactly one wins each key.
	for round := 0; round < 10; round++ {
		key := []byte(fmt.Sprint("lock-", round))
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := map[uint64]error{}
		var mu sync.Mutex
		for id := uint64(1); id <= 2; id++ {
			wg.Add(1)
			go func(id uint64) {
				defer wg.Done()
				<-start
				err := c.nodes[id].CAS(key, nil, []byte(fmt.Sprint("owner-", id)), true)
				mu.Lock()
				errs[id] = err
				mu.Unlock()
			}(id)
		}
		close(start)
		wg.Wait()
		var winner uint64
		for id, err := range errs {
			switch {
			case err == nil:
				if winner != 0 {
					t.Fatalf("round %d: both won", round)
				}
				winner = id
			case !errors.Is(err, ErrCASFailed):
				t.Fatal(err)
			}
		}
		if winner == 0 {
			t.Fatalf("round %d: nobody won", round)
		}
		if got := c.host.do(fmt.Sprint("get lock-", round)); got != fmt.Sprint("owner-", winner) {
			t.Fatalf("round %d: node 3 reads %q, winner %d", round, got, winner)
		}
	}

	// Increments through read-then-CAS from two replicas lose no update.
	mustDo(t, n1.Put([]byte("counter"), []byte("0")))
	var wg sync.WaitGroup
	for _, r := range []*Replica{n1, n2} {
		wg.Add(1)
		go func(r *Replica) {
			defer wg.Done()
			for i := 0; i < 15; i++ {
				for {
					old, err := r.Get([]byte("counter"))
					if err != nil {
						t.Error(err)
						return
					}
					var n int
					fmt.Sscan(string(old), &n)
					err = r.CAS([]byte("counter"), old, []byte(fmt.Sprint(n+1)), false)
					if err == nil {
						break
					}
					if !errors.Is(err, ErrCASFailed) {
						t.Error(err)
						return
					}
				}
			}
		}(r)
	}
	wg.Wait()
	if got := c.host.do("get counter"); got != "30" {
		t.Fatalf("counter %q", got)
	}

	// Batches and appends from different replicas compose; a bad batch writes nothing.
	mustDo(t, n1.Append([]byte("log"), []byte("a")))
	mustDo(t, n2.Append([]byte("log"), []byte("b")))
	wantValue(t, n1, "log", "ab")
	wantCode(t, n2.Batch([]BatchOp{PutOp([]byte("half"), []byte("1")), PutOp(nil, []byte("bad"))}), ErrInvalidArgument)
	if got := c.host.do("get half"); got != "NOT_FOUND" {
		t.Fatal(got)
	}

	// A write through one replica is read through the others with every consistency.
	mustDo(t, n1.Put([]byte("fresh"), []byte("1")))
	for _, cons := range []Consistency{Lease, Linearizable} {
		if v, err := n2.GetWith([]byte("fresh"), cons); err != nil || string(v) != "1" {
			t.Fatalf("consistency %d: %q, %v", cons, v, err)
		}
	}
	waitFor(t, "the stale copy", func() bool {
		v, _ := n2.GetStale([]byte("fresh"))
		return string(v) == "1"
	})
	a, _, err := n2.ScanPrefix([]byte("lock-"), 3, Linearizable)
	mustDo(t, err)
	b, _, err := n1.ScanPrefix([]byte("lock-"), 3, Stale)
	mustDo(t, err)
	if fmt.Sprint(a) != fmt.Sprint(b) || len(a) != 3 {
		t.Fatalf("%v vs %v", a, b)
	}

	// A TTL expires on every replica, at the same log index.
	mustDo(t, n2.PutTTL([]byte("session"), []byte("token"), 500*time.Millisecond))
	if got := c.host.do("get session"); got != "token" {
		t.Fatal(got)
	}
	waitFor(t, "expiry", func() bool {
		_, err := n1.Get([]byte("session"))
		return errors.Is(err, ErrNotFound)
	})
	var feeds []string
	for _, r := range []*Replica{n1, n2} {
		ctx, cancel := context.WithCancel(context.Background())
		events, errc := r.Watch(ctx, []byte("session"), 1)
		evs := collect(t, events, 2)
		cancel()
		<-errc
		if evs[0].Kind != EventPut || evs[1].Kind != EventExpire || string(evs[0].Value) != "token" {
			t.Fatalf("%+v", evs)
		}
		feeds = append(feeds, fmt.Sprintf("%d:%s %d:%s", evs[0].Index, evs[0].Kind, evs[1].Index, evs[1].Kind))
	}
	feeds = append(feeds, c.host.do("watch session 1 2"))
	if feeds[0] != feeds[1] || feeds[0] != feeds[2] {
		t.Fatalf("feeds differ: %q", feeds)
	}
}

func TestChangeFeedResumesOnAReopenedReplicaWithoutGapsOrDuplicates(t *testing.T) {
	c := startCluster(t)
	for i := 0; i < 20; i++ {
		mustDo(t, c.nodes[1].Put([]byte(fmt.Sprintf("w%02d", i)), []byte("v")))
	}
	ctx, cancel := context.WithCancel(context.Background())
	events, errc := c.nodes[2].Watch(ctx, []byte("w"), 1)
	seen := collect(t, events, 15)
	cancel()
	<-errc
	mustDo(t, c.nodes[2].Close())
	for i := 20; i < 35; i++ {
		if got := c.host.do(fmt.Sprintf("put w%02d v", i)); got != "OK" {
			t.Fatal(got)
		}
	}
	mustDo(t, c.nodes[1].Delete([]byte("w00")))
	n2 := c.open(2, c.options(2))
	w, err := n2.OpenWatcher([]byte("w"), seen[len(seen)-1].Index+1)
	mustDo(t, err)
	defer w.Close()
	all := seen
	for len(all) < 36 {
		ev, err := w.Next(10 * time.Second)
		mustDo(t, err)
		all = append(all, ev)
	}
	if _, err := w.Next(300 * time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("an event too many: %v", err)
	}
	var keys []string
	for i, ev := range all {
		keys = append(keys, string(ev.Key))
		if i > 0 && ev.Index <= all[i-1].Index {
			t.Fatalf("event %d at index %d after %d", i, ev.Index, all[i-1].Index)
		}
	}
	var want []string
	for i := 0; i < 35; i++ {
		want = append(want, fmt.Sprintf("w%02d", i))
	}
	if strings.Join(keys, ",") != strings.Join(append(want, "w00"), ",") || all[35].Kind != EventDelete {
		t.Fatalf("keys %v", keys)
	}
}
