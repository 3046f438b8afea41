// Command registry is a tiny read-only OCI distribution (registry v2) server for the
// local test cluster. It serves one OCI image layout directory whose index.json
// entries carry the annotation io.containerd.image.name (e.g.
// "docker.io/library/busybox:latest"). containerd is pointed at it as the only host
// for docker.io and localhost, so that pods naming "busybox" pull successfully even
// with imagePullPolicy Always, and any other image of those registries gets a fast
// 404 (ErrImagePull) instead of a network time-out.
//
// With -basic-auth user:password it answers every request without those credentials
// 401 with a Basic challenge, as a private registry does (plain HTTP: loopback only).
package main

import (
	"crypto/subtle"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type index struct {
	Manifests []descriptor `json:"manifests"`
}

var (
	layout = flag.String("layout", "", "OCI image layout directory to serve")
	listen = flag.String("listen", "127.0.0.1:5000", "address to listen on (loopback only)")
	login  = flag.String("basic-auth", "", "user:password every request must carry (HTTP basic auth); empty: none")
	refs   = map[string]descriptor{} // "ns/repo:tag" -> manifest descriptor
	mtypes = map[string]string{}     // digest -> manifest media type
	pathRe = regexp.MustCompile(`^/v2/(.+)/(manifests|blobs)/([^/]+)$`)
	digRe  = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

func main() {
	flag.Parse()
	if *login != "" && !strings.Contains(*login, ":") {
		log.Fatal("-basic-auth: want user:password")
	}
	raw, err := os.ReadFile(filepath.Join(*layout, "index.json"))
	if err != nil {
		log.Fatal(err)
	}
	var idx index
	if err := json.Unmarshal(raw, &idx); err != nil {
		log.Fatal(err)
	}
	for _, d := range idx.Manifests {
		mtypes[d.Digest] = d.MediaType
		if name := d.Annotations["io.containerd.image.name"]; name != "" {
			refs[name] = d
			log.Printf("serving %s -> %s", name, d.Digest)
		}
	}
	http.HandleFunc("/", handle)
	log.Fatal(http.ListenAndServe(*listen, nil))
}

func fail(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`+"\n", code, msg)
}

func handle(w http.ResponseWriter, r *http.Request) {
	log.Printf("%s %s", r.Method, r.URL)
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if !authorized(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="buildruntime-cluster"`)
		fail(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		fail(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "read-only registry")
		return
	}
	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, "{}")
		return
	}
	m := pathRe.FindStringSubmatch(r.URL.Path)
	if m == nil {
		fail(w, http.StatusNotFound, "NAME_UNKNOWN", "not found")
		return
	}
	repo, kind, ref := m[1], m[2], m[3]
	ns := r.URL.Query().Get("ns")
	if ns == "" {
		ns = "docker.io"
	}
	var dgst, mediaType string
	if kind == "manifests" {
		if digRe.MatchString(ref) {
			dgst, mediaType = ref, mtypes[ref]
			if mediaType == "" {
				mediaType = sniff(ref)
			}
		} else if d, ok := refs[ns+"/"+repo+":"+ref]; ok {
			dgst, mediaType = d.Digest, d.MediaType
		} else {
			fail(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown: "+ns+"/"+repo+":"+ref)
			return
		}
	} else {
		if !digRe.MatchString(ref) {
			fail(w, http.StatusNotFound, "BLOB_UNKNOWN", "bad digest")
			return
		}
		dgst, mediaType = ref, "application/octet-stream"
	}
	p := filepath.Join(*layout, "blobs", "sha256", strings.TrimPrefix(dgst, "sha256:"))
	f, err := os.Open(p)
	if err != nil {
		code := "BLOB_UNKNOWN"
		if kind == "manifests" {
			code = "MANIFEST_UNKNOWN"
		}
		fail(w, http.StatusNotFound, code, "unknown "+dgst)
		return
	}
	defer f.Close()
	st, _ := f.Stat()
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Docker-Content-Digest", dgst)
	w.Header().Set("Content-Length", fmt.Sprint(st.Size()))
	if r.Method == http.MethodHead {
		return
	}
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// authorized tells whether the request carries the -basic-auth credentials (any request
// does when there are none).
func authorized(r *http.Request) bool {
	if *login == "" {
		return true
	}
	user, password, ok := r.BasicAuth()
	return ok && subtle.ConstantTimeCompare([]byte(user+":"+password), []byte(*login)) == 1
}

// sniff reads the mediaType field of a manifest blob addressed by digest.
func sniff(dgst string) string {
	raw, err := os.ReadFile(filepath.Join(*layout, "blobs", "sha256", strings.TrimPrefix(dgst, "sha256:")))
	if err != nil {
		return "application/vnd.oci.image.manifest.v1+json"
	}
	var v struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(raw, &v) != nil || v.MediaType == "" {
		return "application/vnd.oci.image.manifest.v1+json"
	}
	return v.MediaType
}
