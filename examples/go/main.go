// Command kvr-host is a Go program that hosts one kvr replica, with the same flags and REPL as
// the kvr CLI and the C example.
//
//	kvr-host --node-id 1 --listen 127.0.0.1:7001 \
//	         --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --dir data/1
//
// Flags: --KEY VALUE for any kvr option key (dashes or underscores), --option KEY=VALUE,
// --join. With no flags: a single-node replica on ./kvr-data.
// REPL: the commands of examples/c/kvr_host.c (`help` lists them), with byte-identical replies.
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
	"math"
	"os"
	"strings"
	"time"

	kvr "github.com/kvr-db/kvr/bindings/go"
)

const (
	// lineBytesMax is the C host's fgets buffer: a longer line arrives as several.
	lineBytesMax = 65536
	// argsMax is the C host's word limit per line.
	argsMax = 1024
)

const help = "commands: put KEY VALUE | putttl KEY TTL_MS VALUE | get KEY | lget KEY | sget KEY | " +
	"delete KEY | append KEY VALUE | cas KEY EXPECTED NEW | casnew KEY NEW | " +
	"batch put K V del K ... | scan START END LIMIT | prefix PREFIX LIMIT | " +
	"watch PREFIX FROM COUNT TIMEOUT_MS | status | stats | members | add ID ADDR | " +
	"learner ID ADDR | remove ID | transfer ID | backup PATH | quit"

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
	rd := bufio.NewReaderSize(in, lineBytesMax)
	w := bufio.NewWriter(out)
	for {
		line, err := readLine(rd)
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

// readLine reads like fgets into the C host's buffer: up to and including '\n', at most
// lineBytesMax-1 bytes.
func readLine(rd *bufio.Reader) ([]byte, error) {
	var line []byte
	for len(line) < lineBytesMax-1 {
		b, err := rd.ReadByte()
		if err != nil {
			return line, err
		}
		line = append(line, b)
		if b == '\n' {
			break
		}
	}
	return line, nil
}

// execute runs one command line and returns its reply (nothing for a blank line).
func execute(r *kvr.Replica, line []byte) (reply []byte, quit bool) {
	// Like the C host: the line ends at the first CR, LF or NUL, and words are split on blanks.
	if i := bytes.IndexAny(line, "\r\n\x00"); i >= 0 {
		line = line[:i]
	}
	argv := bytes.FieldsFunc(line, func(c rune) bool { return c == ' ' || c == '\t' })
	switch {
	case len(argv) == 0:
		return nil, false
	case len(argv) > argsMax:
		return []byte(fmt.Sprintf("ERR more than %d words on one line\n", argsMax)), false
	case string(argv[0]) == "quit" || string(argv[0]) == "exit":
		return nil, true
	}
	return append(answer(r, line, argv), '\n'), false
}

func answer(r *kvr.Replica, line []byte, argv [][]byte) []byte {
	cmd := string(argv[0])
	key := []byte{}
	if len(argv) > 1 {
		key = argv[1]
	}
	switch cmd {
	case "put":
		if len(argv) < 2 {
			return []byte("ERR usage: put KEY VALUE")
		}
		// The value is the rest of the line after the key, inner and trailing blanks kept.
		v := bytes.TrimLeft(line, " \t")[len(cmd):]
		v = bytes.TrimLeft(v, " \t")[len(key):]
		return done(r.Put(key, bytes.TrimLeft(v, " \t")))
	case "get":
		return getLine(r, key, kvr.Linearizable)
	case "sget":
		return getLine(r, key, kvr.Stale)
	case "delete", "del":
		return done(r.Delete(key))
	case "status":
		return statusLine(r)
	case "help":
		return []byte(help)
	}
	if reply := wordsAnswer(r, argv); reply != nil {
		return reply
	}
	return []byte(`ERR unknown command "` + cmd + `" (try help)`)
}

// wordsAnswer runs the commands with a fixed number of words; nil for a command it does not know.
func wordsAnswer(r *kvr.Replica, argv [][]byte) []byte {
	c, n := string(argv[0]), len(argv)
	switch {
	case c == "putttl" && n == 4:
		return done(r.PutTTL(argv[1], argv[3], durationMillis(strtoull(argv[2]))))
	case c == "append" && n == 3:
		return done(r.Append(argv[1], argv[2]))
	case c == "cas" && n == 4:
		return done(r.CAS(argv[1], argv[2], argv[3], false))
	case c == "casnew" && n == 3:
		return done(r.CAS(argv[1], nil, argv[2], true))
	case c == "lget" && n == 2:
		return getLine(r, argv[1], kvr.Lease)
	case c == "batch":
		return batch(r, argv)
	case c == "scan" || c == "prefix":
		return scan(r, argv)
	case c == "watch":
		return watch(r, argv)
	case c == "stats":
		return jsonLine(r.StatsJSON())
	case c == "members":
		return jsonLine(r.MembersJSON())
	case c == "backup" && n == 2:
		return done(r.Backup(string(argv[1])))
	case c == "add" && n == 3:
		return done(r.AddNode(strtoull(argv[1]), string(argv[2])))
	case c == "learner" && n == 3:
		return done(r.AddLearner(strtoull(argv[1]), string(argv[2])))
	case c == "remove" && n == 2:
		return done(r.RemoveNode(strtoull(argv[1])))
	case c == "transfer" && n == 2:
		return done(r.TransferLeader(strtoull(argv[1])))
	}
	return nil
}

// batch runs `batch put K V del K ...`.
func batch(r *kvr.Replica, argv [][]byte) []byte {
	var ops []kvr.BatchOp
	for i := 1; i < len(argv); {
		switch {
		case string(argv[i]) == "put" && i+2 < len(argv):
			ops = append(ops, kvr.PutOp(argv[i+1], argv[i+2]))
			i += 3
		case string(argv[i]) == "del" && i+1 < len(argv):
			ops = append(ops, kvr.DeleteOp(argv[i+1]))
			i += 2
		default:
			return []byte("ERR usage: batch put KEY VALUE | del KEY ...")
		}
	}
	return done(r.Batch(ops))
}

// scan runs `scan START END LIMIT` (`-` for an open end) and `prefix PREFIX LIMIT`: one page,
// as {"items":[["k","v"],...],"next":"k"|null}.
func scan(r *kvr.Replica, argv [][]byte) []byte {
	isScan := string(argv[0]) == "scan"
	if (isScan && len(argv) != 4) || (!isScan && len(argv) != 3) {
		return []byte("ERR usage: scan START END LIMIT | prefix PREFIX LIMIT")
	}
	limit := clampInt(strtoull(argv[len(argv)-1]))
	var kvs []kvr.KV
	var next []byte
	var err error
	if isScan {
		kvs, next, err = r.Scan(openEnd(argv[1]), openEnd(argv[2]), limit, kvr.Linearizable)
	} else {
		kvs, next, err = r.ScanPrefix(openEnd(argv[1]), limit, kvr.Linearizable)
	}
	if err != nil {
		return errorLine(err)
	}
	out := []byte(`{"items":[`)
	for i, kv := range kvs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, '[')
		out = appendJSONString(out, kv.Key)
		out = append(out, ',')
		out = appendJSONString(out, kv.Value)
		out = append(out, ']')
	}
	out = append(out, `],"next":`...)
	if next == nil {
		out = append(out, "null"...)
	} else {
		out = appendJSONString(out, next)
	}
	return append(out, '}')
}

// watch runs `watch PREFIX FROM_INDEX COUNT TIMEOUT_MS` (`-` for all keys): up to COUNT
// events, waiting at most TIMEOUT_MS for each; it stops at the first wait that ends without one.
func watch(r *kvr.Replica, argv [][]byte) []byte {
	if len(argv) != 5 {
		return []byte("ERR usage: watch PREFIX FROM_INDEX COUNT TIMEOUT_MS")
	}
	w, err := r.OpenWatcher(openEnd(argv[1]), strtoull(argv[2]))
	if err != nil {
		return errorLine(err)
	}
	defer w.Close()
	count := strtoull(argv[3])
	// The C host passes the number on as a uint32_t.
	timeout := uint32(strtoull(argv[4]))
	out := []byte{'['}
	for i := uint64(0); i < count; i++ {
		ev, err := w.Next(durationMillis(uint64(timeout)))
		if err != nil {
			break // a timeout, or a failure: the C host ends the list either way
		}
		if i > 0 {
			out = append(out, ',')
		}
		kind := "?"
		if ev.Kind >= kvr.EventPut && ev.Kind <= kvr.EventExpire {
			kind = ev.Kind.String()
		}
		out = fmt.Appendf(out, `{"index":%d,"kind":"%s","key":`, ev.Index, kind)
		out = appendJSONString(out, ev.Key)
		out = append(out, `,"value":`...)
		out = appendJSONString(out, ev.Value)
		out = append(out, '}')
	}
	return append(out, ']')
}

func openEnd(word []byte) []byte {
	if string(word) == "-" {
		return []byte{}
	}
	return word
}

// appendJSONString appends s as a JSON string escaped exactly like the C host's json_str:
// quote, backslash and control bytes only; every other byte, UTF-8 or not, as is.
func appendJSONString(out, s []byte) []byte {
	out = append(out, '"')
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c < 0x20:
			out = fmt.Appendf(out, `\u%04x`, c)
		default:
			out = append(out, c)
		}
	}
	return append(out, '"')
}

// strtoull is C's strtoull(word, NULL, 10), which the C host uses for numbers: leading digits
// only (0 when none), a leading '-' negates modulo 2^64, overflow saturates.
func strtoull(word []byte) uint64 {
	s := bytes.TrimLeft(word, " \t\n\v\f\r")
	neg := false
	if len(s) > 0 && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	var n uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		d := uint64(c - '0')
		if n > (^uint64(0)-d)/10 {
			return ^uint64(0)
		}
		n = n*10 + d
	}
	if neg {
		return -n
	}
	return n
}

// durationMillis turns milliseconds into a Duration, saturating where a Duration ends (292
// years): as a TTL or a wait, anything that long means "never" alike.
func durationMillis(ms uint64) time.Duration {
	if ms > uint64(math.MaxInt64/int64(time.Millisecond)) {
		return math.MaxInt64
	}
	return time.Duration(ms) * time.Millisecond
}

func clampInt(n uint64) int {
	if n > uint64(^uint(0)>>1) {
		return int(^uint(0) >> 1)
	}
	return int(n)
}

func getLine(r *kvr.Replica, key []byte, c kvr.Consistency) []byte {
	v, err := r.GetWith(key, c)
	if errors.Is(err, kvr.ErrNotFound) {
		return []byte("NOT_FOUND")
	}
	if err != nil {
		return errorLine(err)
	}
	return cString(v)
}

// jsonLine prints the library's JSON text as is, like the C host: re-encoding a parsed value
// could change key order or number formats.
func jsonLine(raw []byte, err error) []byte {
	if err != nil {
		return errorLine(err)
	}
	return cString(raw)
}

// cString is what C's printf("%.*s") shows of b: the bytes before the first NUL.
func cString(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// done is OK, CAS_FAILED for a compare-and-swap that found another value, or the error.
func done(err error) []byte {
	switch {
	case err == nil:
		return []byte("OK")
	case errors.Is(err, kvr.ErrCASFailed):
		return []byte("CAS_FAILED")
	}
	return errorLine(err)
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
