package kvr

/*
#include "kvr.h"
*/
import "C"

import "fmt"

// Code is a kvr result code (the KVR_* constants of kvr.h). The numbers are stable.
type Code int

// Result codes, taken from the header at build time.
const (
	CodeOK              Code = C.KVR_OK
	CodeNotFound        Code = C.KVR_NOT_FOUND
	CodeInvalidArgument Code = C.KVR_INVALID_ARG
	CodeTimeout         Code = C.KVR_TIMEOUT
	CodeNoLeader        Code = C.KVR_NO_LEADER
	CodeClosed          Code = C.KVR_CLOSED
	CodeIO              Code = C.KVR_IO
	CodeCorrupt         Code = C.KVR_CORRUPT
	CodePanic           Code = C.KVR_PANIC
	CodeBusy            Code = C.KVR_BUSY
	CodeCASFailed       Code = C.KVR_CAS_FAILED
	CodeCompacted       Code = C.KVR_COMPACTED
	CodeRemoved         Code = C.KVR_REMOVED
	CodeRefused         Code = C.KVR_REFUSED
)

var codeNames = map[Code]string{
	CodeOK:              "OK",
	CodeNotFound:        "NotFound",
	CodeInvalidArgument: "InvalidArgument",
	CodeTimeout:         "Timeout",
	CodeNoLeader:        "NoLeader",
	CodeClosed:          "Closed",
	CodeIO:              "IO",
	CodeCorrupt:         "Corrupt",
	CodePanic:           "Panic",
	CodeBusy:            "Busy",
	CodeCASFailed:       "CASFailed",
	CodeCompacted:       "Compacted",
	CodeRemoved:         "Removed",
	CodeRefused:         "Refused",
}

// String is the code's Go name ("NotFound"), or Code(N) for a code newer than this package.
func (c Code) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	return fmt.Sprintf("Code(%d)", int(c))
}

// Text is the library's static description of the code ("not found").
func (c Code) Text() string {
	return C.GoString(C.kvr_result_str(C.int(c)))
}

// Error is a failed kvr call: its result code and the library's message.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return "kvr: " + e.Code.Text()
	}
	return "kvr: " + e.Msg
}

// Is makes errors.Is(err, kvr.ErrTimeout) true for every error of that code; a target with a
// message must match the message too.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && (t.Msg == "" || t.Msg == e.Msg)
}

// Sentinel errors, one per result code, for errors.Is.
var (
	ErrNotFound        = &Error{Code: CodeNotFound}
	ErrInvalidArgument = &Error{Code: CodeInvalidArgument}
	ErrTimeout         = &Error{Code: CodeTimeout}
	ErrNoLeader        = &Error{Code: CodeNoLeader}
	ErrClosed          = &Error{Code: CodeClosed}
	ErrIO              = &Error{Code: CodeIO}
	ErrCorrupt         = &Error{Code: CodeCorrupt}
	ErrPanic           = &Error{Code: CodePanic}
	ErrBusy            = &Error{Code: CodeBusy}
	ErrCASFailed       = &Error{Code: CodeCASFailed}
	ErrCompacted       = &Error{Code: CodeCompacted}
	ErrRemoved         = &Error{Code: CodeRemoved}
	ErrRefused         = &Error{Code: CodeRefused}
)
