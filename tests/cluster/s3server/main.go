// Command s3server is the S3-compatible server the tests run on 127.0.0.1: gofakes3's S3 protocol
// over a directory (one sub-directory per bucket), behind a check of AWS Signature Version 4 for one
// access key, so a client holding the wrong secret is refused the way a real object store refuses it.
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3afero"
	"github.com/spf13/afero"
)

func main() {
	dir := flag.String("dir", "", "directory that holds the buckets (created if missing)")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	addrFile := flag.String("addr-file", "", "write the bound address here once listening")
	accessKey := flag.String("access-key", "", "the one access key accepted")
	buckets := flag.String("buckets", "", "comma-separated buckets to create at start")
	flag.Parse()
	secretKey := os.Getenv("S3SERVER_SECRET_KEY")
	if *dir == "" || *accessKey == "" || secretKey == "" {
		log.Fatal("-dir, -access-key and S3SERVER_SECRET_KEY are required")
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		log.Fatal(err)
	}
	backend, err := s3afero.MultiBucket(afero.NewBasePathFs(afero.NewOsFs(), *dir))
	if err != nil {
		log.Fatal(err)
	}
	for _, name := range strings.Split(*buckets, ",") {
		if name == "" {
			continue
		}
		if err := gofakes3.ValidateBucketName(name); err != nil {
			log.Fatalf("bucket %q: %v", name, err)
		}
		exists, err := backend.BucketExists(name)
		if err == nil && !exists {
			err = backend.CreateBucket(name)
		}
		if err != nil {
			log.Fatalf("bucket %s: %v", name, err)
		}
	}
	faker := gofakes3.New(backend, gofakes3.WithoutVersioning())
	handler := &sigV4{next: faker.Server(), accessKey: *accessKey, secretKey: secretKey}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	if *addrFile != "" {
		tmp := *addrFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(ln.Addr().String()), 0o600); err != nil {
			log.Fatal(err)
		}
		if err := os.Rename(tmp, *addrFile); err != nil {
			log.Fatal(err)
		}
	}
	log.Printf("s3server listening on %s, data in %s", ln.Addr(), *dir)
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 30 * time.Second}
	log.Fatal(server.Serve(ln))
}

// sigV4 refuses any request whose Authorization header is not a valid SigV4 signature by the
// configured key pair. Presigned URLs are not supported (the project does not use them).
type sigV4 struct {
	next      http.Handler
	accessKey string
	secretKey string
}

func (s *sigV4) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if code, msg := s.check(r); code != "" {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>%s</Message></Error>", code, msg)
		return
	}
	s.next.ServeHTTP(w, r)
}

func (s *sigV4) check(r *http.Request) (string, string) {
	auth := r.Header.Get("Authorization")
	const algo = "AWS4-HMAC-SHA256 "
	if !strings.HasPrefix(auth, algo) {
		return "AccessDenied", "only AWS Signature Version 4 is accepted"
	}
	fields := map[string]string{}
	for _, part := range strings.Split(auth[len(algo):], ",") {
		key, value, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok {
			fields[key] = value
		}
	}
	scope := strings.Split(fields["Credential"], "/")
	if len(scope) != 5 || scope[4] != "aws4_request" {
		return "AuthorizationHeaderMalformed", "bad credential scope"
	}
	if scope[0] != s.accessKey {
		return "InvalidAccessKeyId", "the access key does not exist"
	}
	signed := strings.Split(fields["SignedHeaders"], ";")
	amzDate := r.Header.Get("X-Amz-Date")
	payload := r.Header.Get("X-Amz-Content-Sha256")
	if amzDate == "" || payload == "" || len(signed) == 0 {
		return "AccessDenied", "x-amz-date and x-amz-content-sha256 are required"
	}
	var headers strings.Builder
	for _, name := range signed {
		value := r.Header.Values(name)
		if name == "host" {
			value = []string{r.Host}
		}
		trimmed := make([]string, len(value))
		for i, v := range value {
			trimmed[i] = strings.Join(strings.Fields(v), " ")
		}
		headers.WriteString(name + ":" + strings.Join(trimmed, ",") + "\n")
	}
	path, _, _ := strings.Cut(r.RequestURI, "?")
	canonical := strings.Join([]string{
		r.Method, path, canonicalQuery(r.URL.Query()), headers.String(), fields["SignedHeaders"], payload,
	}, "\n")
	if os.Getenv("S3SERVER_DEBUG") != "" {
		log.Printf("canonical request:\n%s", canonical)
	}
	digest := sha256.Sum256([]byte(canonical))
	toSign := strings.Join([]string{
		"AWS4-HMAC-SHA256", amzDate, strings.Join(scope[1:], "/"), hex.EncodeToString(digest[:]),
	}, "\n")
	key := []byte("AWS4" + s.secretKey)
	for _, part := range scope[1:] {
		key = hmacSHA256(key, part)
	}
	want := hex.EncodeToString(hmacSHA256(key, toSign))
	if !hmac.Equal([]byte(want), []byte(fields["Signature"])) {
		return "SignatureDoesNotMatch", "the request signature does not match"
	}
	return "", ""
}

func canonicalQuery(values url.Values) string {
	pairs := []string{}
	for key, list := range values {
		for _, v := range list {
			pairs = append(pairs, awsEscape(key)+"="+awsEscape(v))
		}
	}
	sort.Strings(pairs)
	return strings.Join(pairs, "&")
}

func awsEscape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

func hmacSHA256(key []byte, data string) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(data))
	return mac.Sum(nil)
}
