"""OCI images: pull from a registry, import archives, unpack to the erofs rootfs.

The transport and the archive formats are skopeo's (registry v2 with token and
basic auth, OCI layouts, oci-archive, docker-archive; it verifies every blob's
digest), unpacking with whiteouts is umoci's.  Kindling's own code here is only
what those tools do not do for us:

- refs.py: docker's short names (`alpine` -> docker.io/library/alpine:latest);
- store.py: the one shared OCI layout under the cache (blobs stored once) and
  its index of names;
- access.py: TLS (a CA directory for one pull) and credentials (USER:PASS put in a
  0600 authfile, never on skopeo's argv) as skopeo's flags;
- skopeo.py: the skopeo calls, and their errors turned into messages naming the
  reference (unknown tag, registry down, refused credentials, digest mismatch,
  disk full);
- platform.py: which platform to take, with an error naming those an image has
  (skopeo only says "no image found");
- layers.py: refusing `../` and absolute names in layers -- umoci 0.4.7 does not
  refuse them, it clamps them into the root (tests/test_image_oci.py shows it);
- images.py: pull/import/list/inspect/rm and the cached erofs per manifest digest.
"""
