package kvr

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantValue(t *testing.T, r *Replica, key, want string) {
	t.Helper()
	v, err := r.Get([]byte(key))
	if err != nil || string(v) != want {
		t.Fatalf("Get(%q) = %q, %v; want %q", key, v, err, want)
	}
}

func wantAbsent(t *testing.T, r *Replica, key string) {
	t.Helper()
	v, err := r.Get([]byte(key))
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, v, err)
	}
}

// fill writes the keys, with value "v-" + key, in batches of 100.
func fill(t *testing.T, r *Replica, keys []string) {
	t.Helper()
	for i := 0; i < len(keys); i += 100 {
		var ops []BatchOp
		for _, k := range keys[i:min(i+100, len(keys))] {
			ops = append(ops, PutOp([]byte(k), []byte("v-"+k)))
		}
		mustDo(t, r.Batch(ops))
	}
}

func keysOf(kvs []KV) []string {
	out := []string{}
	for _, kv := range kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func TestPutTTLExpiresAndAPlainPutClearsIt(t *testing.T) {
	r := openSingle(t)
	mustDo(t, r.PutTTL([]byte("session"), []byte("token"), 300*time.Millisecond))
	mustDo(t, r.PutTTL([]byte("renewed"), []byte("a"), 300*time.Millisecond))
	mustDo(t, r.Put([]byte("renewed"), []byte("b")))
	mustDo(t, r.PutTTL([]byte("sub-ms"), []byte("rounded up"), time.Microsecond))
	mustDo(t, r.PutTTL([]byte("long"), []byte("lived"), time.Hour))
	wantValue(t, r, "session", "token")
	waitFor(t, "expiry", func() bool {
		_, err := r.GetStale([]byte("session"))
		return errors.Is(err, ErrNotFound)
	})
	wantAbsent(t, r, "session")
	wantValue(t, r, "renewed", "b")
	wantValue(t, r, "long", "lived")
	for _, ttl := range []time.Duration{0, -time.Second} {
		wantCode(t, r.PutTTL([]byte("k"), []byte("v"), ttl), ErrInvalidArgument)
	}
	wantAbsent(t, r, "k")
}

func TestBatchAppliesEveryWriteInOrder(t *testing.T) {
	r := openSingle(t)
	mustDo(t, r.Put([]byte("gone"), []byte("x")))
	mustDo(t, r.Batch([]BatchOp{
		PutOp([]byte("a"), []byte("1")),
		PutOp([]byte("b"), nil),
		DeleteOp([]byte("gone")),
		PutOp([]byte("a"), []byte("3")),
		{Op: OpDelete, Key: []byte("never-there"), Value: []byte("ignored")},
	}))
	wantValue(t, r, "a", "3")
	wantValue(t, r, "b", "")
	wantAbsent(t, r, "gone")
	mustDo(t, r.Batch(nil))
}

func TestBatchWithAnInvalidWriteWritesNothing(t *testing.T) {
	r := openSingle(t)
	mustDo(t, r.Put([]byte("a"), []byte("before")))
	for _, bad := range []BatchOp{
		PutOp(nil, []byte("v")),
		PutOp([]byte{}, []byte("v")),
		PutOp(bytes.Repeat([]byte("k"), 512), []byte("v")),
		PutOp([]byte("big"), make([]byte, 4<<20+1)),
		{Op: OpKind(7), Key: []byte("k")},
	} {
		err := r.Batch([]BatchOp{PutOp([]byte("a"), []byte("after")), PutOp([]byte("new"), []byte("1")), bad})
		wantCode(t, err, ErrInvalidArgument)
		wantValue(t, r, "a", "before")
		wantAbsent(t, r, "new")
	}
	ops := make([]BatchOp, 10001)
	for i := range ops {
		ops[i] = PutOp([]byte(fmt.Sprint("k", i)), []byte("v"))
	}
	wantCode(t, r.Batch(ops), ErrInvalidArgument)
	wantAbsent(t, r, "k0")
}

func TestCASSwapsOnlyOnAMatch(t *testing.T) {
	r := openSingle(t)
	k := []byte("c")
	mustDo(t, r.CAS(k, nil, []byte("1"), true))
	wantCode(t, r.CAS(k, nil, []byte("x"), true), ErrCASFailed)
	wantCode(t, r.CAS(k, []byte("0"), []byte("x"), false), ErrCASFailed)
	wantValue(t, r, "c", "1")
	mustDo(t, r.CAS(k, []byte("1"), []byte("2"), false))
	wantValue(t, r, "c", "2")
	wantCode(t, r.CAS([]byte("absent"), nil, []byte("v"), false), ErrCASFailed)
	mustDo(t, r.Put([]byte("e"), nil))
	mustDo(t, r.CAS([]byte("e"), []byte{}, []byte("filled"), false))
	wantValue(t, r, "e", "filled")
	mustDo(t, r.CASContext(context.Background(), []byte("ctx"), []byte("ignored"), []byte("v"), true))
	wantValue(t, r, "ctx", "v")
}

func TestAppendCreatesAndExtends(t *testing.T) {
	r := openSingle(t)
	mustDo(t, r.Append([]byte("log"), []byte("a")))
	mustDo(t, r.Append([]byte("log"), []byte("bc")))
	mustDo(t, r.AppendContext(context.Background(), []byte("log"), nil))
	wantValue(t, r, "log", "abc")
	mustDo(t, r.Put([]byte("big"), make([]byte, 4<<20-1)))
	mustDo(t, r.Append([]byte("big"), []byte("y")))
	wantCode(t, r.Append([]byte("big"), []byte("z")), ErrInvalidArgument)
	if v, _ := r.Get([]byte("big")); len(v) != 4<<20 || v[len(v)-1] != 'y' {
		t.Fatalf("len %d", len(v))
	}
}

func TestScanPagesFollowContinuations(t *testing.T) {
	r := openSingle(t)
	var keys []string
	for i := 0; i < 250; i++ {
		keys = append(keys, fmt.Sprintf("k%03d", i))
	}
	fill(t, r, append([]string{"a", "z"}, keys...))
	var got []string
	pages := 0
	for start := []byte("k"); ; pages++ {
		kvs, next, err := r.Scan(start, []byte("l"), 100, Linearizable)
		mustDo(t, err)
		got = append(got, keysOf(kvs)...)
		if next == nil {
			break
		}
		if string(next) != keys[len(got)] {
			t.Fatalf("continuation %q after %d keys", next, len(got))
		}
		start = next
	}
	if pages != 2 || strings.Join(got, ",") != strings.Join(keys, ",") {
		t.Fatalf("%d pages: %v", pages, got)
	}
	kvs, next, err := r.Scan(nil, nil, 10000, Stale)
	mustDo(t, err)
	if len(kvs) != 252 || next != nil || string(kvs[0].Key) != "a" || string(kvs[0].Value) != "v-a" {
		t.Fatalf("full scan: %d pairs, next %q", len(kvs), next)
	}
	kvs, _, err = r.Scan([]byte("k100"), []byte("k102"), 10, Lease)
	mustDo(t, err)
	if strings.Join(keysOf(kvs), ",") != "k100,k101" {
		t.Fatal(keysOf(kvs))
	}
}

func TestScanPrefixResumesWithPrefixEnd(t *testing.T) {
	r := openSingle(t)
	var keys []string
	for i := 0; i < 120; i++ {
		keys = append(keys, fmt.Sprintf("p/%03d", i))
	}
	fill(t, r, append([]string{"p", "p0", "q/1", "o\xff"}, keys...))
	kvs, next, err := r.ScanPrefix([]byte("p/"), 50, Linearizable)
	mustDo(t, err)
	if len(kvs) != 50 || string(next) != "p/050" {
		t.Fatalf("%d pairs, next %q", len(kvs), next)
	}
	rest, next, err := r.Scan(next, PrefixEnd([]byte("p/")), 1000, Linearizable)
	mustDo(t, err)
	if next != nil || strings.Join(keysOf(append(kvs, rest...)), ",") != strings.Join(keys, ",") {
		t.Fatalf("resumed prefix scan: %v next %q", keysOf(rest), next)
	}
	kvs, next, err = r.ScanPrefix([]byte("nothing"), 10, Stale)
	if err != nil || kvs != nil || next != nil {
		t.Fatalf("empty prefix scan: %v %q %v", kvs, next, err)
	}
	fill(t, r, []string{"\xff\xff1", "\xff\xff2", "\xfe\xff"})
	kvs, next, err = r.ScanPrefix([]byte("\xff\xff"), 1, Linearizable)
	mustDo(t, err)
	rest, _, err = r.Scan(next, PrefixEnd([]byte("\xff\xff")), 10, Linearizable)
	mustDo(t, err)
	if got := keysOf(append(kvs, rest...)); strings.Join(got, ",") != "\xff\xff1,\xff\xff2" {
		t.Fatalf("%q", got)
	}
}

func TestPrefixEnd(t *testing.T) {
	for in, want := range map[string]string{"abc": "abd", "a\xff\xff": "b", "\xff": "", "": ""} {
		got := PrefixEnd([]byte(in))
		if string(got) != want || (want == "" && got != nil) {
			t.Errorf("PrefixEnd(%q) = %q", in, got)
		}
	}
	p := []byte("ab")
	PrefixEnd(p)
	if string(p) != "ab" {
		t.Fatal("PrefixEnd changed its argument")
	}
}

func TestBadScanArgumentsAreInvalidArgument(t *testing.T) {
	r := openSingle(t)
	for _, c := range []struct {
		limit      int
		start, end string
		cons       Consistency
		want       string
	}{
		{0, "", "", Linearizable, "limit"},
		{-1, "", "", Linearizable, "limit"},
		{10001, "", "", Linearizable, "limit"},
		{10, "b", "a", Linearizable, "end"},
		{10, "", "", Consistency(9), "consistency"},
	} {
		_, _, err := r.Scan([]byte(c.start), []byte(c.end), c.limit, c.cons)
		if e := wantCode(t, err, ErrInvalidArgument); !strings.Contains(e.Msg, c.want) {
			t.Errorf("%+v: %q", c, e.Msg)
		}
	}
	_, _, err := r.ScanPrefix(nil, 0, Linearizable)
	wantCode(t, err, ErrInvalidArgument)
}

func TestEveryConsistencyReadsThisReplicasWrites(t *testing.T) {
	r := openSingle(t)
	mustDo(t, r.Put([]byte("r"), []byte("1")))
	for _, c := range []Consistency{Linearizable, Lease, Stale} {
		if v, err := r.GetWith([]byte("r"), c); err != nil || string(v) != "1" {
			t.Fatalf("consistency %d: %q, %v", c, v, err)
		}
		_, err := r.GetWith([]byte("absent"), c)
		wantCode(t, err, ErrNotFound)
	}
}

func TestStatsReportTheDocumentedFields(t *testing.T) {
	r := openSingle(t)
	for i := 0; i < 5; i++ {
		mustDo(t, r.Put([]byte(fmt.Sprint("s", i)), []byte("v")))
	}
	s, err := r.Stats()
	mustDo(t, err)
	if s.NodeID != 1 || s.Role != "leader" || s.LeaderID != 1 || s.ProposalsTotal < 5 || s.Term == 0 {
		t.Fatalf("%+v", s)
	}
	if !(s.FirstIndex <= s.AppliedIndex && s.AppliedIndex <= s.CommitIndex && s.CommitIndex <= s.LastIndex) {
		t.Fatalf("indexes out of order: %+v", s)
	}
	if s.LogBytes == 0 || s.DataBytes == 0 || s.EntriesApplied == 0 || s.ApplyBatches == 0 || s.Peers == nil || len(s.Peers) != 0 {
		t.Fatalf("%+v", s)
	}
	raw, err := r.StatsJSON()
	mustDo(t, err)
	var fields map[string]any
	mustDo(t, json.Unmarshal(raw, &fields))
	for _, f := range []string{"node_id", "role", "leader_id", "term", "commit_index", "applied_index",
		"first_index", "last_index", "log_entries", "log_bytes", "data_bytes", "snapshot_index",
		"snapshots_taken", "snapshots_installed", "snapshots_sent", "proposals_total", "proposals_per_s",
		"apply_batches", "apply_batch_avg", "apply_batch_max", "entries_applied", "duplicates",
		"log_writes", "log_write_us", "apply_commit_us", "lease_reads_local", "read_rounds", "votes_held",
		"peers",
		"transport"} {
		if _, ok := fields[f]; !ok {
			t.Errorf("stats lack %q: %s", f, raw)
		}
	}
	tr, _ := fields["transport"].(map[string]any)
	for _, f := range []string{"sent", "received", "dropped", "refused"} {
		if _, ok := tr[f]; !ok {
			t.Errorf("transport lacks %q: %v", f, fields["transport"])
		}
	}
}

func TestMembersOfASingleNodeReplica(t *testing.T) {
	r := openSingle(t)
	ms, err := r.Members()
	mustDo(t, err)
	if len(ms) != 1 || ms[0] != (Member{ID: 1, Addr: "", Role: "voter"}) {
		t.Fatalf("%+v", ms)
	}
	raw, err := r.MembersJSON()
	if err != nil || string(raw) != `[{"id":1,"addr":"","role":"voter"}]` {
		t.Fatalf("%s, %v", raw, err)
	}
	if ms, err := r.MembersContext(context.Background()); err != nil || len(ms) != 1 {
		t.Fatalf("%+v, %v", ms, err)
	}
	mustDo(t, r.TransferLeader(1))
}

func TestBackupSeedsANewReplica(t *testing.T) {
	tmp := t.TempDir()
	backup := filepath.Join(tmp, "backup.mdb")
	r, err := Open(Options{Dir: filepath.Join(tmp, "src"), Extra: fastRaft()})
	mustDo(t, err)
	var keys []string
	for i := 0; i < 500; i++ {
		keys = append(keys, fmt.Sprintf("b%04d", i))
	}
	fill(t, r, keys)
	mustDo(t, r.Backup(backup))
	mustDo(t, r.Put([]byte("after-backup"), []byte("not in it")))
	e := wantCode(t, r.Backup(backup), ErrInvalidArgument)
	if !strings.Contains(e.Msg, "exists") {
		t.Fatal(e.Msg)
	}
	wantCode(t, r.Backup(filepath.Join(tmp, "no", "such", "dir.mdb")), ErrIO)
	wantCode(t, r.Backup("nul\x00inside"), ErrInvalidArgument)
	mustDo(t, r.Close())
	if st, err := os.Stat(backup); err != nil || st.Size() == 0 {
		t.Fatalf("backup file: %v", err)
	}

	seeded, err := Open(Options{Dir: filepath.Join(tmp, "restored"), Extra: with(fastRaft(), "restore_from", backup, "cluster_id", "7")})
	mustDo(t, err)
	defer seeded.Close()
	wantValue(t, seeded, "b0499", "v-b0499")
	wantAbsent(t, seeded, "after-backup")
	kvs, _, err := seeded.ScanPrefix([]byte("b"), 1000, Linearizable)
	if err != nil || len(kvs) != 500 {
		t.Fatalf("%d pairs, %v", len(kvs), err)
	}
	mustDo(t, seeded.Put([]byte("new"), []byte("write")))
}

func TestNewCallsValidateTheirArguments(t *testing.T) {
	r := openSingle(t)
	v := []byte("v")
	for name, err := range map[string]error{
		"PutTTL nil key":        r.PutTTL(nil, v, time.Second),
		"PutTTL empty key":      r.PutTTL([]byte{}, v, time.Second),
		"CAS nil key":           r.CAS(nil, nil, v, true),
		"CAS long key":          r.CAS(bytes.Repeat(v, 600), nil, v, true),
		"Append nil key":        r.Append(nil, v),
		"AddNode id 0":          r.AddNode(0, "127.0.0.1:1"),
		"AddNode bad addr":      r.AddNode(2, "not-an-address"),
		"AddNode NUL":           r.AddNode(2, "127.0.0.1:1\x00:2"),
		"AddLearner empty":      r.AddLearner(2, ""),
		"RemoveNode stranger":   r.RemoveNode(9),
		"RemoveNode only voter": r.RemoveNode(1),
	} {
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
		}
	}
	if kvs, _, err := r.Scan(nil, nil, 10, Linearizable); err != nil || len(kvs) != 0 {
		t.Fatalf("something was written: %v %v", keysOf(kvs), err)
	}
}

func TestEveryNewCallOnAClosedReplicaIsErrClosed(t *testing.T) {
	r, err := Open(Options{Dir: t.TempDir(), Extra: fastRaft()})
	mustDo(t, err)
	mustDo(t, r.Close())
	k, ctx := []byte("k"), context.Background()
	errs := map[string]error{
		"PutTTL":         r.PutTTL(k, k, time.Second),
		"PutTTLContext":  r.PutTTLContext(ctx, k, k, time.Second),
		"Batch":          r.Batch([]BatchOp{PutOp(k, k)}),
		"BatchContext":   r.BatchContext(ctx, nil),
		"CAS":            r.CAS(k, nil, k, true),
		"Append":         r.Append(k, k),
		"AddNode":        r.AddNode(2, "127.0.0.1:1"),
		"AddNodeContext": r.AddNodeContext(ctx, 2, "127.0.0.1:1"),
		"AddLearner":     r.AddLearner(2, "127.0.0.1:1"),
		"RemoveNode":     r.RemoveNode(2),
		"TransferLeader": r.TransferLeader(1),
		"Backup":         r.Backup(filepath.Join(t.TempDir(), "b.mdb")),
	}
	_, errs["GetWith Lease"] = r.GetWith(k, Lease)
	_, _, errs["Scan"] = r.Scan(nil, nil, 10, Linearizable)
	_, _, errs["ScanPrefix"] = r.ScanPrefix(nil, 10, Linearizable)
	_, errs["Members"] = r.Members()
	_, errs["MembersJSON"] = r.MembersJSON()
	_, errs["Stats"] = r.Stats()
	_, errs["StatsJSON"] = r.StatsJSON()
	_, errs["OpenWatcher"] = r.OpenWatcher(nil, 0)
	events, errc := r.Watch(ctx, nil, 0)
	if _, ok := <-events; ok {
		t.Error("Watch on a closed replica sent an event")
	}
	errs["Watch"] = <-errc
	for name, err := range errs {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s: %v, want ErrClosed", name, err)
		}
	}
}

// Context variants of the blocking calls give up when their context ends; the calls
// themselves still finish (with NoLeader here, unseen).
func TestContextVariantsGiveUpWithTheirContext(t *testing.T) {
	r := lonelyMember(t, "60000")
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	k := []byte("k")
	calls := map[string]func() error{
		"PutTTLContext":         func() error { return r.PutTTLContext(ctx, k, k, time.Minute) },
		"BatchContext":          func() error { return r.BatchContext(ctx, []BatchOp{PutOp(k, k)}) },
		"CASContext":            func() error { return r.CASContext(ctx, k, nil, k, true) },
		"AppendContext":         func() error { return r.AppendContext(ctx, k, k) },
		"AddNodeContext":        func() error { return r.AddNodeContext(ctx, 4, "127.0.0.1:1") },
		"AddLearnerContext":     func() error { return r.AddLearnerContext(ctx, 4, "127.0.0.1:1") },
		"RemoveNodeContext":     func() error { return r.RemoveNodeContext(ctx, 2) },
		"TransferLeaderContext": func() error { return r.TransferLeaderContext(ctx, 2) },
		"MembersContext":        func() error { _, err := r.MembersContext(ctx); return err },
	}
	for name, call := range calls {
		start := time.Now()
		if err := call(); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
			t.Errorf("%s = %v after %v", name, err, time.Since(start))
		}
	}
}
