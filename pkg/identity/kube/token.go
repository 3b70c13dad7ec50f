package kube

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/tether-mesh/tether/pkg/identity"
)

// MaxTokenSize bounds the tokens the attestor looks at. A projected
// ServiceAccount token is about 1 KiB.
const MaxTokenSize = 16 << 10

// tokenClaims are the claims read from a token WITHOUT checking its
// signature. They are used only after the API server has accepted the
// token, to bound how long the answer is cached.
type tokenClaims struct {
	// Expiry is the exp claim; zero when absent or not a sane number.
	Expiry time.Time
}

// errBadToken marks a token that is not even shaped like a JWT.
var errBadToken = fmt.Errorf("%w: not a Kubernetes ServiceAccount token", identity.ErrUnauthenticated)

// parseToken checks that token looks like a compact JWS (three non-empty
// base64url parts, a JSON object header and payload, at most MaxTokenSize
// bytes) and reads its exp claim. It does not verify anything: the
// TokenReview API does. Errors wrap identity.ErrUnauthenticated.
func parseToken(token string) (tokenClaims, error) {
	var c tokenClaims
	if token == "" {
		return c, fmt.Errorf("%w: empty token", errBadToken)
	}
	if len(token) > MaxTokenSize {
		return c, fmt.Errorf("%w: %d bytes is more than the limit of %d", errBadToken, len(token), MaxTokenSize)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c, fmt.Errorf("%w: a JWT has 3 dot-separated parts, this has %d", errBadToken, len(parts))
	}
	names := [3]string{"header", "payload", "signature"}
	var decoded [3][]byte
	for i, p := range parts {
		if p == "" {
			return c, fmt.Errorf("%w: empty %s", errBadToken, names[i])
		}
		b, err := base64.RawURLEncoding.DecodeString(p)
		if err != nil {
			return c, fmt.Errorf("%w: %s is not base64url: %v", errBadToken, names[i], err)
		}
		decoded[i] = b
	}
	if err := jsonObject(decoded[0], nil); err != nil {
		return c, fmt.Errorf("%w: header: %v", errBadToken, err)
	}
	var payload struct {
		Exp json.RawMessage `json:"exp"`
	}
	if err := jsonObject(decoded[1], &payload); err != nil {
		return c, fmt.Errorf("%w: payload: %v", errBadToken, err)
	}
	c.Expiry = numericDate(payload.Exp)
	return c, nil
}

// jsonObject checks that data is one JSON object and decodes it into v
// when v is not nil.
func jsonObject(data []byte, v any) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return errors.New("not a JSON object")
	}
	if v == nil {
		v = &map[string]json.RawMessage{}
	}
	return json.Unmarshal(data, v)
}

// maxNumericDate bounds exp values taken seriously (year 2286).
const maxNumericDate = 1e10

// numericDate reads a JWT NumericDate (seconds since the epoch, possibly
// fractional). Anything else gives the zero time.
func numericDate(raw json.RawMessage) time.Time {
	if len(raw) == 0 {
		return time.Time{}
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil || math.IsNaN(f) || f <= 0 || f > maxNumericDate {
		return time.Time{}
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9))
}
