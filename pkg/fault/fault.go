// Package fault holds the kinds of failure that every service reports and the gRPC edge maps
// to status codes, so a service never picks a status code itself.
//
// Messages built with these must name ids and fields only, never personal data: the edge
// sends them to the caller as they are.
package fault

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound: no such record, or the caller may not know that it exists.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a record with that key exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: the record changed since the caller read it (optimistic concurrency).
	ErrConflict = errors.New("changed since it was read")
	// ErrFailedPrecondition: the record is not in a state that allows the operation.
	ErrFailedPrecondition = errors.New("not allowed in the current state")
	// ErrPermissionDenied: the caller or the protocol does not allow the operation.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnavailable: the service is shutting down or cannot reach its store; try again.
	ErrUnavailable = errors.New("unavailable")
)

// FieldError is bad input that protovalidate could not catch, such as a page token that
// does not decode. It names the field.
type FieldError struct {
	Field       string
	Description string
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Description) }

// InvalidField returns a FieldError for field.
func InvalidField(field, format string, args ...any) error {
	return &FieldError{Field: field, Description: fmt.Sprintf(format, args...)}
}
