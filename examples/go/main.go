// Command kvr-host is a Go program that hosts one kvr replica, with the same flags and REPL as
// the kvr CLI and the C example.
//
//	kvr-host --node-id 1 --listen 127.0.0.1:7001 \
//	         --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --dir data/1
//
// Flags: --KEY VALUE for any kvr option key (dashes or underscores), --option KEY=VALUE,
// --join. With no flags: a single-node replica on ./kvr-data.
// REPL: put KEY VALUE | get KEY | sget KEY | delete KEY | status | quit.
// Replies go to stdout, one line each; diagnostics go to stderr.
//
// Build it with cgo pointed at the header and library (see bindings/go/README.md):
//
//	go build -o kvr-host .
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	kvr "github.com/kvr-db/kvr/bindings/go"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout))
}

func run(args []string, in io.Reader, out io.Writer) int {
	opts, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvr-host: %v\n", err)
		return 2
	}
	r, err := kvr.Open(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kvr-host: cannot open replica: %v\n", err)
		return 1
	}
	repl(r, in, out)
	if err := r.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "kvr-host: close: %v\n", err)
		return 1
	}
	return 0
}

// parseArgs turns flags into option keys the way the C host does; the library validates them.
func parseArgs(args []string) (kvr.Options, error) {
	extra := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--join" {
			extra["join"] = "true"
			continue
		}
		if !strings.HasPrefix(a, "--") || i+1 >= len(args) {
			return kvr.Options{}, fmt.Errorf("bad argument %s", a)
		}
		i++
		key, value := a[2:], args[i]
		if a == "--option" {
			var ok bool
			if key, value, ok = strings.Cut(args[i], "="); !ok {
				return kvr.Options{}, errors.New("--option needs KEY=VALUE")
			}
		}
		extra[strings.ReplaceAll(key, "-", "_")] = value
	}
	// Extra is applied after Dir, so a --dir flag overrides the default.
	return kvr.Options{Dir: "kvr-data", Extra: extra}, nil
}

func repl(r *kvr.Replica, in io.Reader, out io.Writer) {
	rd := bufio.NewReader(in)
	w := bufio.NewWriter(out)
	for {
		line, err := rd.ReadBytes('\n')
		if len(line) == 0 && err != nil {
			return
		}
		reply, quit := execute(r, line)
		if quit {
			return
		}
		w.Write(reply)
		w.Flush()
	}
}

// splitCommand tokenises a line like the C host's strtok calls: the value is everything after
// the key with leading blanks removed, inner and trailing blanks kept.
func splitCommand(line []byte) (cmd, key, value []byte) {
	line = bytes.TrimLeft(line, " \t\r\n")
	if i := bytes.IndexAny(line, "\r\n"); i >= 0 {
		line = line[:i]
	}
	cmd, rest, found := cutAny(line, " \t")
	if !found {
		return cmd, nil, nil
	}
	rest = bytes.TrimLeft(rest, " \t")
	if len(rest) == 0 {
		return cmd, nil, nil
	}
	key, value, _ = cutAny(rest, " \t")
	return cmd, key, bytes.TrimLeft(value, " \t")
}

func cutAny(s []byte, seps string) (before, after []byte, found bool) {
	if i := bytes.IndexAny(s, seps); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, nil, false
}

// execute runs one command line and returns its reply (nothing for a blank line).
func execute(r *kvr.Replica, line []byte) (reply []byte, quit bool) {
	cmd, key, value := splitCommand(line)
	switch string(cmd) {
	case "":
		return nil, false
	case "quit", "exit":
		return nil, true
	}
	return append(answer(r, string(cmd), key, value), '\n'), false
}

func answer(r *kvr.Replica, cmd string, key, value []byte) []byte {
	if key == nil {
		// A missing key is an empty one, which the library rejects with its own message.
		key = []byte{}
	}
	switch cmd {
	case "put":
		if len(key) == 0 {
			return []byte("ERR usage: put KEY VALUE")
		}
		return okOrError(r.Put(key, value))
	case "get", "sget":
		c := kvr.Linearizable
		if cmd == "sget" {
			c = kvr.Stale
		}
		v, err := r.GetWith(key, c)
		if errors.Is(err, kvr.ErrNotFound) {
			return []byte("NOT_FOUND")
		}
		if err != nil {
			return errorLine(err)
		}
		return v
	case "delete", "del":
		return okOrError(r.Delete(key))
	case "status":
		return statusLine(r)
	case "help":
		return []byte("commands: put KEY VALUE | get KEY | sget KEY | delete KEY | status | quit")
	}
	return []byte(`ERR unknown command "` + cmd + `" (try help)`)
}

func okOrError(err error) []byte {
	if err != nil {
		return errorLine(err)
	}
	return []byte("OK")
}

func errorLine(err error) []byte {
	var e *kvr.Error
	if errors.As(err, &e) {
		return []byte(fmt.Sprintf("ERR %d: %s", e.Code, e.Msg))
	}
	return []byte("ERR " + err.Error())
}

func statusLine(r *kvr.Replica) []byte {
	s, err := r.Status()
	if err != nil {
		return errorLine(err)
	}
	return []byte(fmt.Sprintf("node=%d leader=%d term=%d role=%s commit=%d applied=%d last=%d applied_at_open=%d entries_applied=%d",
		s.NodeID, s.LeaderID, s.Term, s.Role, s.CommitIndex, s.AppliedIndex, s.LastIndex, s.AppliedIndexAtOpen, s.EntriesApplied))
}
