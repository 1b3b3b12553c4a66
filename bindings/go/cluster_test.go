package kvr

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A test binary started with hostEnv set hosts one replica instead of running tests, so that
// the cluster test gets real separate processes without building anything else.
const hostEnv = "KVR_GO_TEST_HOST_OPTIONS"

func TestMain(m *testing.M) {
	if opts := os.Getenv(hostEnv); opts != "" {
		os.Exit(hostReplica(opts, os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// hostReplica opens a replica and serves a minimal REPL: put K V, get K, sget K, status,
// members, transfer ID, watch PREFIX FROM N (N events as "index:kind" words), quit.
func hostReplica(optsJSON string, in io.Reader, out io.Writer) int {
	var opts Options
	if err := json.Unmarshal([]byte(optsJSON), &opts); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	r, err := Open(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer r.Close()
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		var reply string
		switch {
		case f[0] == "quit":
			return 0
		case f[0] == "put" && len(f) == 3:
			reply = replyTo(nil, r.Put([]byte(f[1]), []byte(f[2])))
		case f[0] == "get" && len(f) == 2:
			reply = replyTo(r.Get([]byte(f[1])))
		case f[0] == "sget" && len(f) == 2:
			reply = replyTo(r.GetStale([]byte(f[1])))
		case f[0] == "members":
			reply = replyTo(r.MembersJSON())
		case f[0] == "transfer" && len(f) == 2:
			id, _ := strconv.ParseUint(f[1], 10, 64)
			reply = replyTo(nil, r.TransferLeader(id))
		case f[0] == "watch" && len(f) == 3:
			reply = hostWatch(r, f[1], f[2])
		case f[0] == "status":
			s, err := r.Status()
			reply = replyTo(nil, err)
			if err == nil {
				reply = fmt.Sprintf("leader=%d applied=%d applied_at_open=%d", s.LeaderID, s.AppliedIndex, s.AppliedIndexAtOpen)
			}
		default:
			reply = "ERR bad command"
		}
		fmt.Fprintln(out, reply)
	}
	return 0
}

// hostWatch answers `watch PREFIX FROM N` (the last two words in f[2]).
func hostWatch(r *Replica, prefix, rest string) string {
	var from uint64
	var n int
	if _, err := fmt.Sscan(rest, &from, &n); err != nil {
		return "ERR " + err.Error()
	}
	w, err := r.OpenWatcher([]byte(prefix), from)
	if err != nil {
		return replyTo(nil, err)
	}
	defer w.Close()
	var out []string
	for len(out) < n {
		ev, err := w.Next(10 * time.Second)
		if err != nil {
			return replyTo(nil, err)
		}
		out = append(out, fmt.Sprintf("%d:%s", ev.Index, ev.Kind))
	}
	return strings.Join(out, " ")
}

func replyTo(v []byte, err error) string {
	var e *Error
	switch {
	case errors.Is(err, ErrNotFound):
		return "NOT_FOUND"
	case errors.As(err, &e):
		return fmt.Sprintf("ERR %d: %s", e.Code, e.Msg)
	case err != nil:
		return "ERR " + err.Error()
	case v == nil:
		return "OK"
	}
	return string(v)
}

// hostProc is one replica in a child process, driven over its REPL.
type hostProc struct {
	t     *testing.T
	opts  Options
	log   string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func newHost(t *testing.T, opts Options) *hostProc {
	h := &hostProc{t: t, opts: opts, log: opts.Dir + ".log"}
	t.Cleanup(h.kill9)
	return h
}

func (h *hostProc) start() {
	h.t.Helper()
	opts, err := json.Marshal(h.opts)
	if err != nil {
		h.t.Fatal(err)
	}
	log, err := os.OpenFile(h.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		h.t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), hostEnv+"="+string(opts))
	cmd.Stderr = log
	if h.stdin, err = cmd.StdinPipe(); err != nil {
		h.t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.cmd = cmd
	lines := make(chan string, 16)
	h.lines = lines
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
}

func (h *hostProc) do(line string) string {
	h.t.Helper()
	if _, err := fmt.Fprintln(h.stdin, line); err != nil {
		h.t.Fatalf("node %d: %v", h.opts.NodeID, err)
	}
	select {
	case reply, ok := <-h.lines:
		if !ok {
			h.t.Fatalf("node %d exited on %q; log:\n%s", h.opts.NodeID, line, h.tail())
		}
		return reply
	case <-time.After(30 * time.Second):
		h.t.Fatalf("node %d: no reply to %q; log:\n%s", h.opts.NodeID, line, h.tail())
	}
	return ""
}

func (h *hostProc) status(key string) uint64 {
	h.t.Helper()
	for _, kv := range strings.Fields(h.do("status")) {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				h.t.Fatal(err)
			}
			return n
		}
	}
	h.t.Fatalf("node %d: no %s in status", h.opts.NodeID, key)
	return 0
}

func (h *hostProc) tail() string {
	b, _ := os.ReadFile(h.log)
	lines := strings.Split(string(b), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

func (h *hostProc) kill9() {
	if h.cmd != nil {
		h.cmd.Process.Kill()
		h.cmd.Wait()
		h.cmd = nil
	}
}

func (h *hostProc) stop() {
	h.t.Helper()
	fmt.Fprintln(h.stdin, "quit")
	h.stdin.Close()
	if err := h.cmd.Wait(); err != nil {
		h.t.Fatalf("node %d: %v; log:\n%s", h.opts.NodeID, err, h.tail())
	}
	h.cmd = nil
}

// This process hosts node 1 through the package; two child processes host nodes 2 and 3.
func TestThreeProcessClusterReplicatesSurvivesKill9AndCatchesUp(t *testing.T) {
	tmp := t.TempDir()
	peers := peersFor(freePorts(t, 3))
	opts := func(id uint64) Options {
		return Options{NodeID: id, Dir: filepath.Join(tmp, fmt.Sprintf("n%d", id)), Peers: peers, Extra: fastRaft()}
	}
	hosts := map[uint64]*hostProc{2: newHost(t, opts(2)), 3: newHost(t, opts(3))}
	for _, h := range hosts {
		h.start()
	}
	me, err := Open(opts(1))
	if err != nil {
		t.Fatal(err)
	}
	defer me.Close()
	waitFor(t, "an agreed leader", func() bool {
		s, _ := me.Status()
		return s.LeaderID != 0 && hosts[2].status("leader") == s.LeaderID && hosts[3].status("leader") == s.LeaderID
	})

	if err := me.Put([]byte("from-1"), []byte("in-process")); err != nil {
		t.Fatal(err)
	}
	for id, h := range hosts {
		if got := h.do(fmt.Sprintf("put from-%d host %d", id, id)); got != "OK" {
			t.Fatalf("put through node %d: %s", id, got)
		}
	}
	for id, h := range hosts {
		for from := uint64(2); from <= 3; from++ {
			if got, want := h.do(fmt.Sprintf("get from-%d", from)), fmt.Sprintf("host %d", from); got != want {
				t.Fatalf("node %d read %q, want %q", id, got, want)
			}
		}
		if got := h.do("get from-1"); got != "in-process" {
			t.Fatalf("node %d read %q", id, got)
		}
		if got := h.do("get nothing-here"); got != "NOT_FOUND" {
			t.Fatalf("node %d read %q for a missing key", id, got)
		}
		if v, err := me.Get([]byte(fmt.Sprintf("from-%d", id))); err != nil || string(v) != fmt.Sprintf("host %d", id) {
			t.Fatalf("node 1 read %q, %v", v, err)
		}
	}

	// Another process holds node 2's directory.
	_, err = Open(opts(2))
	wantCode(t, err, ErrBusy)

	// kill -9 one host; the two left keep a quorum; the restarted host catches up.
	hosts[3].kill9()
	if err := me.Put([]byte("while-down"), []byte("written without node 3")); err != nil {
		t.Fatal(err)
	}
	if err := me.Delete([]byte("from-2")); err != nil {
		t.Fatal(err)
	}
	hosts[3].start()
	if got := hosts[3].do("get while-down"); got != "written without node 3" {
		t.Fatalf("restarted node read %q", got)
	}
	if got := hosts[3].do("get from-2"); got != "NOT_FOUND" {
		t.Fatalf("restarted node read %q for a deleted key", got)
	}
	if at := hosts[3].status("applied_at_open"); at <= 5 {
		t.Fatalf("restarted node opened at applied index %d: it did not recover its directory", at)
	}
	if _, err := me.GetStale([]byte("from-2")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stale read of a deleted key: %v", err)
	}
	for _, h := range hosts {
		h.stop()
	}
}
