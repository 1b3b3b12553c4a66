package kvr_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	kvr "github.com/kvr-db/kvr/bindings/go"
)

// A single-node replica: without Peers, a replica is a cluster of one and elects itself.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "kvr-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	r, err := kvr.Open(kvr.Options{Dir: filepath.Join(dir, "data")})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	if err := r.Put([]byte("greeting"), []byte("hello")); err != nil {
		log.Fatal(err)
	}
	v, err := r.Get([]byte("greeting"))
	fmt.Printf("%s %v\n", v, err)

	_, err = r.Get([]byte("missing"))
	fmt.Println(errors.Is(err, kvr.ErrNotFound))

	s, _ := r.Status()
	fmt.Println(s.Role)
	// Output:
	// hello <nil>
	// true
	// leader
}

// A lock taken with compare-and-swap: exactly one caller creates the key.
func ExampleReplica_CAS() {
	dir, err := os.MkdirTemp("", "kvr-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	r, err := kvr.Open(kvr.Options{Dir: filepath.Join(dir, "data")})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	lock := []byte("lock")
	fmt.Println(r.CAS(lock, nil, []byte("me"), true))
	err = r.CAS(lock, nil, []byte("you"), true)
	fmt.Println(errors.Is(err, kvr.ErrCASFailed))
	fmt.Println(r.CAS(lock, []byte("me"), []byte("you"), false))
	// Output:
	// <nil>
	// true
	// <nil>
}

// The change feed on a channel, stopped by cancelling its context.
func ExampleReplica_Watch() {
	dir, err := os.MkdirTemp("", "kvr-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	r, err := kvr.Open(kvr.Options{Dir: filepath.Join(dir, "data")})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	ctx, cancel := context.WithCancel(context.Background())
	events, errc := r.Watch(ctx, []byte("user/"), 0)
	r.Put([]byte("user/1"), []byte("ada"))
	r.Put([]byte("other"), []byte("not watched"))
	r.Delete([]byte("user/1"))
	for i := 0; i < 2; i++ {
		ev := <-events
		fmt.Printf("%v %s %q\n", ev.Kind, ev.Key, ev.Value)
	}
	cancel()
	fmt.Println(<-errc)
	// Output:
	// put user/1 "ada"
	// delete user/1 ""
	// context canceled
}
