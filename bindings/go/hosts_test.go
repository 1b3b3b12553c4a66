package kvr

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The scripted REPL session (every command, good and bad) that the example hosts must answer
// byte for byte like the C host.
const replSession = "../testdata/repl_session.txt"

// variableReplies depend on timing or on-disk sizes; they are compared for shape only.
var variableReplies = map[string]bool{"stats": true, "status": true}

// sessionCommands is the first word of each line that gets a reply, tokenised like the C host.
func sessionCommands(session []byte) []string {
	var out []string
	for _, raw := range bytes.Split(session, []byte("\n")) {
		if i := bytes.IndexAny(raw, "\r\x00"); i >= 0 {
			raw = raw[:i]
		}
		words := strings.FieldsFunc(string(raw), func(c rune) bool { return c == ' ' || c == '\t' })
		if len(words) == 0 {
			continue
		}
		if words[0] == "quit" || words[0] == "exit" {
			break
		}
		out = append(out, words[0])
	}
	return out
}

// kvrLibDir is where cgo linked libkvr from: the first -L of CGO_LDFLAGS holding it.
func kvrLibDir(t *testing.T) string {
	for _, f := range strings.Fields(os.Getenv("CGO_LDFLAGS")) {
		if dir, ok := strings.CutPrefix(f, "-L"); ok {
			if _, err := os.Stat(filepath.Join(dir, "libkvr.so")); err == nil {
				return dir
			}
		}
	}
	t.Skip("libkvr.so not found through CGO_LDFLAGS")
	return ""
}

func buildHosts(t *testing.T) map[string][]string {
	t.Helper()
	bin := t.TempDir()
	hosts := map[string][]string{}
	goHost := filepath.Join(bin, "kvr-host-go")
	build := exec.Command("go", "build", "-buildvcs=false", "-o", goHost, ".")
	build.Dir = filepath.Join("..", "..", "examples", "go")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building examples/go: %v\n%s", err, out)
	}
	hosts["Go"] = []string{goHost}

	libdir := kvrLibDir(t)
	root, _ := filepath.Abs(filepath.Join("..", ".."))
	if cc, err := exec.LookPath("cc"); err == nil {
		cHost := filepath.Join(bin, "kvr_host")
		out, err := exec.Command(cc, "-std=c11", "-I", filepath.Join(root, "include"), "-o", cHost,
			filepath.Join(root, "examples", "c", "kvr_host.c"), "-L", libdir, "-lkvr", "-Wl,-rpath,"+libdir).CombinedOutput()
		if err != nil {
			t.Fatalf("building examples/c: %v\n%s", err, out)
		}
		hosts["C"] = []string{cHost}
	}
	if py, err := exec.LookPath("python3"); err == nil {
		hosts["Python"] = []string{py, filepath.Join(root, "examples", "python", "kvr_host.py")}
		t.Setenv("PYTHONPATH", filepath.Join(root, "bindings", "python", "src"))
		t.Setenv("KVR_LIBRARY", filepath.Join(libdir, "libkvr.so"))
	}
	return hosts
}

func runHost(t *testing.T, argv []string, session []byte) [][]byte {
	t.Helper()
	dir := t.TempDir()
	argv = append(argv, "--dir", "data", "--tick-ms", "30", "--election-ticks", "10", "--heartbeat-ticks", "2")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(session)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, stderr.Bytes())
	}
	if _, err := os.Stat(filepath.Join(dir, "b.mdb")); err != nil {
		t.Errorf("%v: the backup command wrote no file: %v", argv, err)
	}
	return bytes.Split(bytes.TrimSuffix(out, []byte("\n")), []byte("\n"))
}

func TestExampleHostsReplyLikeTheCHost(t *testing.T) {
	session, err := os.ReadFile(replSession)
	if err != nil {
		t.Fatal(err)
	}
	cmds := sessionCommands(session)
	hosts := buildHosts(t)
	replies := map[string][][]byte{}
	for name, argv := range hosts {
		replies[name] = runHost(t, argv, session)
		if len(replies[name]) != len(cmds) {
			t.Fatalf("%s host: %d replies to %d commands", name, len(replies[name]), len(cmds))
		}
	}
	reference := "C"
	if _, ok := replies["C"]; !ok {
		t.Log("no C compiler: comparing with the Python host")
		reference = "Python"
	}
	if _, ok := replies[reference]; !ok {
		t.Skip("neither a C compiler nor python3 to compare with")
	}
	for name, got := range replies {
		for i, cmd := range cmds {
			if !variableReplies[cmd] && !bytes.Equal(got[i], replies[reference][i]) {
				t.Errorf("%s host, command %d (%s):\n got  %q\n want %q", name, i, cmd, got[i], replies[reference][i])
			}
		}
	}

	// What the session must show whatever the C host says, so that equally wrong hosts fail.
	goReplies := replies["Go"]
	text := bytes.Join(goReplies, []byte("\n"))
	for _, want := range []string{
		`CAS_FAILED`,
		`{"items":[["ap","xy"],["b","two  words  "]],"next":"b1"}`,
		`["ctl","a\u0009b\u0001c"]`,
		`["q","quote\"back\\slash"]`,
		"[\"hi\",\"\xff\xfe raw\"]",
		`"kind":"delete","key":"a","value":""}`,
		`"kind":"expire","key":"short","value":""}]`,
		`[{"id":1,"addr":"","role":"voter"},{"id":2,"addr":"127.0.0.1:1","role":"learner"}]`,
		`ERR -2: invalid argument: b.mdb already exists`,
		`ERR more than 1024 words on one line`,
		`ERR unknown command "lget" (try help)`,
	} {
		if !bytes.Contains(text, []byte(want)) {
			t.Errorf("no %q in the Go host's replies", want)
		}
	}
	for i, cmd := range cmds {
		switch cmd {
		case "stats":
			var s Stats
			if err := json.Unmarshal(goReplies[i], &s); err != nil || s.NodeID != 1 {
				t.Errorf("stats reply %q: %v", goReplies[i], err)
			}
		case "status":
			if !regexp.MustCompile(`^node=1 leader=1 term=\d+ role=leader `).Match(goReplies[i]) {
				t.Errorf("status reply %q", goReplies[i])
			}
		}
	}
}
