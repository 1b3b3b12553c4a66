package kvr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// fastRaft makes elections fast enough for tests yet robust on a loaded 2-core machine.
func fastRaft() map[string]string {
	return map[string]string{
		"tick_ms":            "30",
		"election_ticks":     "10",
		"heartbeat_ticks":    "2",
		"request_timeout_ms": "10000",
	}
}

func with(m map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func peersFor(ports []int) map[uint64]string {
	peers := map[uint64]string{}
	for i, p := range ports {
		peers[uint64(i+1)] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	return peers
}

func openSingle(t *testing.T) *Replica {
	t.Helper()
	r, err := Open(Options{Dir: filepath.Join(t.TempDir(), "r"), Extra: fastRaft()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func wantCode(t *testing.T, err error, sentinel *Error) *Error {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("got error %v, want %v", err, sentinel.Code)
	}
	var e *Error
	if !errors.As(err, &e) || e.Code != sentinel.Code || e.Msg == "" {
		t.Fatalf("error %#v is not a *kvr.Error with code %v and a message", err, sentinel.Code)
	}
	return e
}

func TestPutGetDeleteRoundTrip(t *testing.T) {
	r := openSingle(t)
	if err := r.Put([]byte("k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Get([]byte("k")); err != nil || string(v) != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if err := r.Delete([]byte("k")); err != nil {
		t.Fatal(err)
	}
	v, err := r.Get([]byte("k"))
	wantCode(t, err, ErrNotFound)
	if v != nil {
		t.Fatalf("value %q for a missing key", v)
	}
	if err := r.Delete([]byte("never-there")); err != nil {
		t.Fatalf("deleting an absent key: %v", err)
	}
}

func TestBinaryEmptyAndLargestValues(t *testing.T) {
	r := openSingle(t)
	bin := bytes.Repeat([]byte{0, 1, 0xff}, 100)
	if err := r.Put([]byte("\x00bin\xff"), bin); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Get([]byte("\x00bin\xff")); err != nil || !bytes.Equal(v, bin) {
		t.Fatalf("binary value: %v", err)
	}
	for _, empty := range [][]byte{nil, {}} {
		if err := r.Put([]byte("empty"), empty); err != nil {
			t.Fatal(err)
		}
		v, err := r.Get([]byte("empty"))
		if err != nil || v == nil || len(v) != 0 {
			t.Fatalf("empty value: %q (nil=%v), %v", v, v == nil, err)
		}
	}
	big := bytes.Repeat([]byte("x"), 4<<20)
	longest := bytes.Repeat([]byte("k"), 511)
	if err := r.Put(longest, big); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Get(longest); err != nil || !bytes.Equal(v, big) {
		t.Fatalf("largest value: len %d, %v", len(v), err)
	}
}

func TestStaleReadSeesLocalWrites(t *testing.T) {
	r := openSingle(t)
	if err := r.Put([]byte("s"), []byte("1")); err != nil {
		t.Fatal(err)
	}
	if v, err := r.GetStale([]byte("s")); err != nil || string(v) != "1" {
		t.Fatalf("GetStale = %q, %v", v, err)
	}
	_, err := r.GetWith([]byte("absent"), Stale)
	wantCode(t, err, ErrNotFound)
	_, err = r.GetWith([]byte("s"), Consistency(7))
	wantCode(t, err, ErrInvalidArgument)
}

func TestEmptyOrNilKeyIsInvalidArgument(t *testing.T) {
	r := openSingle(t)
	for _, key := range [][]byte{nil, {}} {
		e := wantCode(t, r.Put(key, []byte("v")), ErrInvalidArgument)
		if !strings.Contains(e.Msg, "key is") {
			t.Errorf("message %q", e.Msg)
		}
		_, err := r.Get(key)
		wantCode(t, err, ErrInvalidArgument)
		wantCode(t, r.Delete(key), ErrInvalidArgument)
	}
}

func TestOversizedKeyAndValueAreInvalidArgument(t *testing.T) {
	r := openSingle(t)
	long := bytes.Repeat([]byte("k"), 512)
	e := wantCode(t, r.Put(long, []byte("v")), ErrInvalidArgument)
	if !strings.Contains(e.Msg, "exceeds") {
		t.Errorf("message %q", e.Msg)
	}
	_, err := r.Get(long)
	wantCode(t, err, ErrInvalidArgument)
	wantCode(t, r.Put([]byte("k"), make([]byte, 4<<20+1)), ErrInvalidArgument)
	_, err = r.Get([]byte("k"))
	wantCode(t, err, ErrNotFound)
}

func TestStatusReportsEveryField(t *testing.T) {
	r := openSingle(t)
	if err := r.Put([]byte("a"), []byte("1")); err != nil {
		t.Fatal(err)
	}
	s, err := r.Status()
	if err != nil {
		t.Fatal(err)
	}
	if s.NodeID != 1 || s.LeaderID != 1 || s.Role != RoleLeader || s.Role.String() != "leader" || s.Term == 0 {
		t.Fatalf("status %+v", s)
	}
	if !(s.AppliedIndex <= s.CommitIndex && s.CommitIndex <= s.LastIndex) || s.EntriesApplied == 0 {
		t.Fatalf("indexes out of order: %+v", s)
	}
}

func TestDataSurvivesReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	r, err := Open(Options{NodeID: 1, Dir: dir, Extra: fastRaft()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Put([]byte("persist"), []byte("yes")); err != nil {
		t.Fatal(err)
	}
	before, _ := r.Status()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r, err = Open(Options{NodeID: 1, Dir: dir, Extra: fastRaft()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if v, err := r.Get([]byte("persist")); err != nil || string(v) != "yes" {
		t.Fatalf("after reopen: %q, %v", v, err)
	}
	if s, _ := r.Status(); s.AppliedIndexAtOpen != before.AppliedIndex {
		t.Fatalf("applied at open %d, want %d", s.AppliedIndexAtOpen, before.AppliedIndex)
	}
}

func TestCloseIsIdempotentAndCallsAfterItAreErrClosed(t *testing.T) {
	r, err := Open(Options{Dir: t.TempDir(), Extra: fastRaft()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	k := []byte("k")
	wantCode(t, r.Put(k, k), ErrClosed)
	_, err = r.Get(k)
	wantCode(t, err, ErrClosed)
	_, err = r.GetStale(k)
	wantCode(t, err, ErrClosed)
	wantCode(t, r.Delete(k), ErrClosed)
	_, err = r.Status()
	wantCode(t, err, ErrClosed)
	wantCode(t, r.PutContext(context.Background(), k, k), ErrClosed)
}

func TestConcurrentCloseIsSafe(t *testing.T) {
	r, err := Open(Options{Dir: t.TempDir(), Extra: fastRaft()})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = r.Close()
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestFinalizerReleasesAForgottenReplica(t *testing.T) {
	dir := t.TempDir()
	func() {
		if _, err := Open(Options{Dir: dir, Extra: fastRaft()}); err != nil {
			t.Fatal(err)
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		runtime.GC()
		r, err := Open(Options{Dir: dir, Extra: fastRaft()})
		if err == nil {
			r.Close()
			return
		}
		if !errors.Is(err, ErrBusy) || time.Now().After(deadline) {
			t.Fatalf("directory never released: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDirectoryOpenTwiceIsBusy(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(Options{Dir: dir, Extra: fastRaft()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = Open(Options{Dir: dir, Extra: fastRaft()})
	e := wantCode(t, err, ErrBusy)
	if e.Code != -9 || !strings.Contains(e.Msg, "in use") {
		t.Fatalf("%#v", e)
	}
}

func TestUnknownOptionIsInvalidArgumentNamingIt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "o")
	_, err := Open(Options{Dir: dir, Extra: map[string]string{"no_such_option": "1"}})
	e := wantCode(t, err, ErrInvalidArgument)
	if !strings.Contains(e.Msg, "no_such_option") {
		t.Fatalf("message %q", e.Msg)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("bad options created the directory: %v", err)
	}
}

func TestBadOptionValuesAreInvalidArgument(t *testing.T) {
	cases := []struct {
		opts Options
		want string
	}{
		{Options{Extra: map[string]string{"tick_ms": "fast"}}, "tick_ms"},
		{Options{Extra: map[string]string{"tick_ms": "0"}}, "tick_ms"},
		{Options{Extra: map[string]string{"join": "maybe"}}, "join"},
		{Options{Listen: "no-port"}, "listen"},
		{Options{Extra: map[string]string{"node_id": "0"}}, "node_id"},
		{Options{Extra: map[string]string{"election_ticks": "2", "heartbeat_ticks": "2"}}, "election_ticks"},
		{Options{Extra: map[string]string{"tick_ms": "1\x002"}}, "NUL"},
		{Options{}, "dir"},
	}
	for _, c := range cases {
		if c.want != "dir" {
			c.opts.Dir = filepath.Join(t.TempDir(), "o")
		}
		_, err := Open(c.opts)
		e := wantCode(t, err, ErrInvalidArgument)
		if !strings.Contains(e.Msg, c.want) {
			t.Errorf("%+v: message %q does not mention %q", c.opts, e.Msg, c.want)
		}
	}
}

func TestMalformedPeersAreInvalidArgument(t *testing.T) {
	for _, peers := range []string{"garbage", "1=", "x=127.0.0.1:1", "1=127.0.0.1", "2=127.0.0.1:1"} {
		_, err := Open(Options{NodeID: 1, Dir: t.TempDir(), Extra: with(fastRaft(), "peers", peers)})
		wantCode(t, err, ErrInvalidArgument)
	}
	for _, peers := range []map[uint64]string{{1: "127.0.0.1"}, {1: "127.0.0.1:1", 2: ""}, {2: "127.0.0.1:1"}} {
		_, err := Open(Options{NodeID: 1, Dir: t.TempDir(), Peers: peers, Extra: fastRaft()})
		wantCode(t, err, ErrInvalidArgument)
	}
}

func TestUnusableDirectoryIsErrIO(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Options{Dir: filepath.Join(file, "sub")})
	wantCode(t, err, ErrIO)
}

func TestDamagedLogIsErrCorrupt(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if err := r.Put([]byte(fmt.Sprint("k", i)), bytes.Repeat([]byte("v"), 100)); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	// Flip a byte of an early write-ahead log batch: the batches after it are intact, so this
	// is damage, not a torn last append that recovery may drop.
	segments, err := filepath.Glob(filepath.Join(dir, "wal", "*.log"))
	if err != nil || len(segments) == 0 {
		t.Fatalf("no log segment: %v", err)
	}
	sort.Strings(segments)
	f, err := os.OpenFile(segments[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 300); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{b[0] ^ 0xff}, 300); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = Open(Options{Dir: dir})
	wantCode(t, err, ErrCorrupt)
}

// lonelyMember is node 1 of a three-node cluster whose other members never start.
func lonelyMember(t *testing.T, timeoutMs string) *Replica {
	t.Helper()
	r, err := Open(Options{
		NodeID: 1,
		Dir:    t.TempDir(),
		Peers:  peersFor(freePorts(t, 3)),
		Extra:  with(fastRaft(), "request_timeout_ms", timeoutMs),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestWithoutQuorumCallsFailWithNoLeader(t *testing.T) {
	r := lonelyMember(t, "300")
	k := []byte("k")
	wantCode(t, r.Put(k, k), ErrNoLeader)
	_, err := r.Get(k)
	wantCode(t, err, ErrNoLeader)
	wantCode(t, r.Delete(k), ErrNoLeader)
	_, err = r.GetStale(k)
	wantCode(t, err, ErrNotFound) // a stale read needs no quorum
}

func TestCloseWakesACallBlockedInAnotherGoroutine(t *testing.T) {
	r := lonelyMember(t, "60000")
	done := make(chan error, 1)
	go func() { done <- r.Put([]byte("k"), []byte("v")) }()
	select {
	case err := <-done:
		t.Fatalf("Put returned without a leader: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		wantCode(t, err, ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("blocked Put did not return after Close")
	}
}

func TestContextCancelsTheWait(t *testing.T) {
	r := lonelyMember(t, "60000")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := r.PutContext(ctx, []byte("k"), []byte("v"))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("PutContext = %v after %v", err, time.Since(start))
	}
	_, err = r.GetContext(ctx, []byte("k"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GetContext on a done context = %v", err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel2() }()
	if err := r.DeleteContext(ctx2, []byte("k")); !errors.Is(err, context.Canceled) {
		t.Fatalf("DeleteContext = %v", err)
	}
}

func TestContextCallsSucceedLikePlainOnes(t *testing.T) {
	r := openSingle(t)
	ctx := context.Background()
	if err := r.PutContext(ctx, []byte("c"), []byte("1")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if v, err := r.GetContext(ctx, []byte("c")); err != nil || string(v) != "1" {
		t.Fatalf("GetContext = %q, %v", v, err)
	}
	if err := r.DeleteContext(ctx, []byte("c")); err != nil {
		t.Fatal(err)
	}
	_, err := r.GetContext(ctx, []byte("c"))
	wantCode(t, err, ErrNotFound)
}

// Slow ticks keep the leader in office (check_quorum steps it down only after an election
// timeout) for longer than the request timeout, so the write times out rather than finds no
// leader.
func TestLeaderThatLostItsQuorumTimesOut(t *testing.T) {
	peers := peersFor(freePorts(t, 2))
	extra := map[string]string{"tick_ms": "50", "election_ticks": "10", "heartbeat_ticks": "2", "request_timeout_ms": "150"}
	var rs []*Replica
	for id := uint64(1); id <= 2; id++ {
		r, err := Open(Options{NodeID: id, Dir: t.TempDir(), Peers: peers, Extra: extra})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		rs = append(rs, r)
	}
	var leader, follower *Replica
	waitFor(t, "a leader", func() bool {
		a, _ := rs[0].Status()
		b, _ := rs[1].Status()
		if a.LeaderID == 0 || a.LeaderID != b.LeaderID {
			return false
		}
		leader, follower = rs[a.LeaderID-1], rs[2-a.LeaderID]
		return true
	})
	if err := follower.Close(); err != nil {
		t.Fatal(err)
	}
	e := wantCode(t, leader.Put([]byte("k"), []byte("v")), ErrTimeout)
	if e.Code != -3 {
		t.Fatal(e)
	}
}

func TestConcurrentWritersOnOneHandle(t *testing.T) {
	r := openSingle(t)
	var wg sync.WaitGroup
	for n := 0; n < 4; n++ {
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				if err := r.Put([]byte(fmt.Sprintf("t%d-%d", n, i)), []byte(fmt.Sprint(n, i))); err != nil {
					t.Error(err)
				}
			}
		}(n)
	}
	wg.Wait()
	for n := 0; n < 4; n++ {
		for i := 0; i < 20; i++ {
			if v, err := r.Get([]byte(fmt.Sprintf("t%d-%d", n, i))); err != nil || string(v) != fmt.Sprint(n, i) {
				t.Fatalf("t%d-%d = %q, %v", n, i, v, err)
			}
		}
	}
}

func TestEveryCodeTheLibraryNamesHasASentinel(t *testing.T) {
	unknown := Code(-1000).Text()
	sentinels := map[Code]*Error{}
	for _, e := range []*Error{ErrNotFound, ErrInvalidArgument, ErrTimeout, ErrNoLeader, ErrClosed, ErrIO,
		ErrCorrupt, ErrPanic, ErrBusy, ErrCASFailed, ErrCompacted, ErrRemoved, ErrRefused} {
		sentinels[e.Code] = e
	}
	named := 0
	for c := Code(-1); c > -100; c-- {
		if c.Text() == unknown {
			continue
		}
		named++
		s, ok := sentinels[c]
		if !ok || strings.HasPrefix(c.String(), "Code(") {
			t.Errorf("code %d (%s) has no sentinel or name", c, c.Text())
			continue
		}
		err := error(&Error{Code: c, Msg: "x"})
		if !errors.Is(err, s) {
			t.Errorf("errors.Is(code %d, %v) is false", c, s.Code)
		}
		for other, o := range sentinels {
			if other != c && errors.Is(err, o) {
				t.Errorf("code %d matches sentinel %v", c, other)
			}
		}
	}
	if named != len(sentinels) {
		t.Errorf("library names %d codes, package has %d sentinels", named, len(sentinels))
	}
	if CodeBusy != -9 || CodeRefused != -13 || ErrBusy.Error() != "kvr: busy" {
		t.Fatal("codes drifted from the header")
	}
	if Code(-99).String() != "Code(-99)" {
		t.Fatal(Code(-99).String())
	}
}

func TestVersionCheck(t *testing.T) {
	if !strings.HasPrefix(Version(), "0.") {
		t.Fatalf("Version() = %q", Version())
	}
	if err := versionOK(); err != nil {
		t.Fatal(err)
	}
	if checkVersion(1000, 1000) != nil || checkVersion(2005, 1000) != nil {
		t.Fatal("same or newer minor must be accepted")
	}
	if checkVersion(1000, 2000) == nil || checkVersion(1000000, 1000) == nil {
		t.Fatal("older minor or other major must be rejected")
	}
}

func TestPeersStringSortsById(t *testing.T) {
	got := PeersString(map[uint64]string{3: "c:3", 1: "a:1", 10: "j:10"})
	if got != "1=a:1,3=c:3,10=j:10" {
		t.Fatal(got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
