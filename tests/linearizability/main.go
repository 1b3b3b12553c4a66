// Command kvr-lincheck checks a kvr fault-test history for linearizability with porcupine.
//
// The history is a file of JSON lines, one operation each, written by the Rust harness
// (tests/faults/history.rs):
//
//	{"client":3,"op":"put","key":"r1","value":"w3-17","call":1200,"ret":5400}
//	{"client":1,"op":"get","key":"r1","found":true,"value":"w3-17","call":1300,"ret":1900}
//	{"client":2,"op":"delete","key":"r0","call":2000,"ret":-1}
//
// Times are nanoseconds since the start of the run. "ret":-1 marks an operation whose outcome
// is unknown (timeout, lost connection, killed process): it may or may not have taken effect,
// so it gets porcupine's convention for a pending call, a return at +infinity. Reads that
// failed carry no information and are not in the file.
//
// Exit status: 0 linearizable, 1 not linearizable (a visualization is written into -out),
// 2 bad input or the check did not finish within -timeout.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

type record struct {
	Client int     `json:"client"`
	Op     string  `json:"op"`
	Key    string  `json:"key"`
	Value  *string `json:"value"`
	Found  bool    `json:"found"`
	Call   int64   `json:"call"`
	Ret    int64   `json:"ret"`
}

// register is the state of one key: absent, or present with a value. Comparable, so the
// checker's default equality works.
type register struct {
	Present bool
	Value   string
}

type input struct {
	Op    string
	Key   string
	Value string
}

func (r register) String() string {
	if !r.Present {
		return "absent"
	}
	return fmt.Sprintf("%q", r.Value)
}

var model = porcupine.Model{
	Partition: partitionByKey,
	Init:      func() interface{} { return register{} },
	Step: func(state, in, out interface{}) (bool, interface{}) {
		st := state.(register)
		i := in.(input)
		switch i.Op {
		case "put":
			return true, register{Present: true, Value: i.Value}
		case "delete":
			return true, register{}
		default: // get
			return out.(register) == st, st
		}
	},
	DescribeOperation: func(in, out interface{}) string {
		i := in.(input)
		switch i.Op {
		case "put":
			return fmt.Sprintf("put(%s, %q)", i.Key, i.Value)
		case "delete":
			return fmt.Sprintf("delete(%s)", i.Key)
		default:
			return fmt.Sprintf("get(%s) -> %s", i.Key, out.(register))
		}
	},
	DescribeState: func(state interface{}) string { return state.(register).String() },
}

func partitionByKey(history []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	var keys []string
	for _, op := range history {
		k := op.Input.(input).Key
		if _, ok := byKey[k]; !ok {
			keys = append(keys, k)
		}
		byKey[k] = append(byKey[k], op)
	}
	sort.Strings(keys)
	parts := make([][]porcupine.Operation, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, byKey[k])
	}
	return parts
}

func load(path string) ([]record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var recs []record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, line, err)
		}
		switch r.Op {
		case "put", "get", "delete":
		default:
			return nil, fmt.Errorf("%s:%d: unknown op %q", path, line, r.Op)
		}
		if (r.Op == "put" || (r.Op == "get" && r.Found)) && r.Value == nil {
			return nil, fmt.Errorf("%s:%d: %s without a value", path, line, r.Op)
		}
		if r.Ret != -1 && r.Ret < r.Call {
			return nil, fmt.Errorf("%s:%d: returns before it is called", path, line)
		}
		if r.Op == "get" && r.Ret == -1 {
			return nil, fmt.Errorf("%s:%d: a read with an unknown outcome carries no information", path, line)
		}
		recs = append(recs, r)
	}
	return recs, sc.Err()
}

// operations turns records into porcupine operations. A put with an unknown outcome whose
// value no read ever returned is left out: with a return at +infinity it can always be
// linearized after everything else, where nothing observes it, so dropping it changes no
// verdict, while keeping it multiplies the states the search has to visit.
func operations(recs []record) (ops []porcupine.Operation, pruned int) {
	observed := map[string]bool{}
	for _, r := range recs {
		if r.Op == "get" && r.Found {
			observed[r.Key+"\x00"+*r.Value] = true
		}
	}
	clients := map[int]int{}
	for _, r := range recs {
		if r.Op == "put" && r.Ret == -1 && !observed[r.Key+"\x00"+*r.Value] {
			pruned++
			continue
		}
		in := input{Op: r.Op, Key: r.Key}
		if r.Value != nil && r.Op == "put" {
			in.Value = *r.Value
		}
		var out interface{}
		if r.Op == "get" {
			out = register{Present: r.Found, Value: deref(r.Value)}
		}
		ret := r.Ret
		if ret == -1 {
			ret = math.MaxInt64
		}
		// Dense client ids keep the visualization compact.
		c, ok := clients[r.Client]
		if !ok {
			c = len(clients)
			clients[r.Client] = c
		}
		ops = append(ops, porcupine.Operation{ClientId: c, Input: in, Call: r.Call, Output: out, Return: ret})
	}
	return ops, pruned
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func main() {
	history := flag.String("history", "", "history file (JSON lines)")
	outDir := flag.String("out", ".", "directory for the visualization written on a violation")
	timeout := flag.Duration("timeout", 120*time.Second, "give up (exit 2) after this long")
	flag.Parse()
	if *history == "" {
		fmt.Fprintln(os.Stderr, "usage: kvr-lincheck -history FILE [-out DIR] [-timeout 2m]")
		os.Exit(2)
	}
	recs, err := load(*history)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvr-lincheck:", err)
		os.Exit(2)
	}
	ops, pruned := operations(recs)
	keys := len(partitionByKey(ops))
	res, info := porcupine.CheckOperationsVerbose(model, ops, *timeout)
	summary := fmt.Sprintf("ops=%d keys=%d pruned_unobserved_unknown=%d", len(ops), keys, pruned)
	switch res {
	case porcupine.Ok:
		fmt.Println("linearizable", summary)
	case porcupine.Illegal:
		path := filepath.Join(*outDir, "linearizability.html")
		if err := porcupine.VisualizePath(model, info, path); err != nil {
			fmt.Fprintln(os.Stderr, "kvr-lincheck: writing the visualization:", err)
		}
		fmt.Println("NOT linearizable", summary, "visualization="+path)
		os.Exit(1)
	default:
		fmt.Println("unknown (check timed out)", summary)
		os.Exit(2)
	}
}
