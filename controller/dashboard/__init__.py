"""The operator dashboard (`/dashboard` on the ingress): the pure state builder (`state`), the
operator token (`auth`), the glue the ingress mounts (`service`) and the page (`static/`)."""
