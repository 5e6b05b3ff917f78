package records

import (
	"encoding/base64"
	"strconv"
	"strings"

	"github.com/throughcare/throughcare/pkg/fault"
)

const pageTokenPrefix = "after:"

// EncodePageToken makes an opaque token that resumes a listing after key.
func EncodePageToken(key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + key))
}

// DecodePageToken returns the key a token resumes after; "" for the first page. A token
// that was not made by EncodePageToken is bad input naming the page_token field.
func DecodePageToken(token string) (string, error) {
	if token == "" {
		return "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	key, ok := strings.CutPrefix(string(raw), pageTokenPrefix)
	if err != nil || !ok || !ValidKey(key) {
		return "", fault.InvalidField("page_token", "is not a token from a previous response")
	}
	return key, nil
}

// EncodeRevisionToken makes a token that resumes a listing after a bucket revision.
func EncodeRevisionToken(rev uint64) string { return EncodePageToken(strconv.FormatUint(rev, 10)) }

// DecodeRevisionToken returns the revision a token from EncodeRevisionToken resumes after;
// 0 for the first page.
func DecodeRevisionToken(token string) (uint64, error) {
	key, err := DecodePageToken(token)
	if err != nil || key == "" {
		return 0, err
	}
	rev, err := strconv.ParseUint(key, 10, 64)
	if err != nil {
		return 0, fault.InvalidField("page_token", "is not a token from a previous response")
	}
	return rev, nil
}
