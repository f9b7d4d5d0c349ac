/*
 * mg_forward — proxy routes: forwards a client request to the route's
 * upstream through mg_proxy and streams the response back. See mg_forward.c.
 */
#ifndef MG_FORWARD_H
#define MG_FORWARD_H

#include "mg_req.h"

/*
 * Starts forwarding right after the head: the body (if any) streams in later.
 * `target` (from balancer plugins) is tried first when usable, else NULL.
 */
void mg_forward_start(mg_req_t *r, mg_target_t *target);
/* May the client's body bytes be passed on now? (0: stop reading; mg_conn_resume_body follows) */
int mg_forward_body_ready(mg_req_t *r);
void mg_forward_body(mg_req_t *r, const char *data, size_t len);
void mg_forward_body_end(mg_req_t *r);
/* The client connection's output drained: resume reading the upstream. */
void mg_forward_output_drained(mg_req_t *r);
/*
 * A gRPC call on HTTP/2 whose response started and must end early
 * (r->error_kind says why): ends it with grpc-status trailers and returns 1;
 * 0 when the response must be reset instead (mg_req_break).
 */
int mg_forward_end_grpc(mg_req_t *r);
/* Client gone or deadline: drop the upstream exchange without callbacks. */
void mg_forward_cancel(mg_req_t *r);

#endif
