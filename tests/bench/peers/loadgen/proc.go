package loadgen

import (
	"context"
	"errors"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// SignalContext is cancelled on SIGINT or SIGTERM, so that the caller unwinds
// through its deferred cleanup instead of dying with children still running.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// FreePorts returns n distinct loopback ports that were free a moment ago.
// All listeners are held open together so the kernel cannot hand out the
// same port twice.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Children tracks the processes a launcher started and stops them all.
type Children struct {
	mu    sync.Mutex
	procs []*child
}

type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts cmd and tracks it. The child gets SIGKILL from the kernel if
// the launcher dies without running Stop (e.g. SIGKILL of the launcher).
func (cs *Children) Start(name string, cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	cs.mu.Lock()
	cs.procs = append(cs.procs, c)
	cs.mu.Unlock()
	return nil
}

// Exited reports the first child that has exited, if any; the launcher uses
// it to fail fast instead of waiting on a cluster that lost a member.
func (cs *Children) Exited() error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, c := range cs.procs {
		select {
		case <-c.done:
			return errors.New(c.name + " exited: " + errString(c.err))
		default:
		}
	}
	return nil
}

func errString(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// Stop sends SIGTERM to every child, waits up to grace for them, then
// SIGKILLs the rest. A grace of zero kills at once.
func (cs *Children) Stop(grace time.Duration) {
	cs.mu.Lock()
	procs := cs.procs
	cs.procs = nil
	cs.mu.Unlock()
	if grace <= 0 {
		for _, c := range procs {
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		return
	}
	for _, c := range procs {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	expired := false
	for _, c := range procs {
		if !expired {
			select {
			case <-c.done:
				continue
			case <-timer.C:
				expired = true
			}
		}
		select {
		case <-c.done:
		default:
			log.Printf("%s did not stop within %v, killing it", c.name, grace)
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	}
}

// Exit logs err (if any) and exits non-zero; an interrupted run is reported
// as such rather than as a context error.
func Exit(err error) {
	if err == nil {
		return
	}
	if errors.Is(err, context.Canceled) {
		err = errors.New("interrupted")
	}
	log.Print(err)
	os.Exit(1)
}
