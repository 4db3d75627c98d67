################################################################################
# Client endpoint: one Application Load Balancer per environment (endpoint_enabled)
#
# Clients -> HTTPS (ACM certificate, TLS 1.3/1.2 policy) on endpoint_port -> the ALB
# -> HTTPS to every node's endpoint (the serving_endpoint role's nginx on endpoint_port, which
# checks the client's token and proxies to TorchServe on loopback) -> the model. The target
# group's health check asks each node's endpoint_health_check_path (/ping, which nginx answers
# without a token from TorchServe's /ping) and the ALB routes only to nodes that answer 200.
#
# Every count below depends on variables only, so that `endpoint_enabled = false` plans
# exactly what the module planned before the endpoint existed (nothing of this file).
################################################################################

locals {
  endpoint_target_port = coalesce(var.endpoint_target_port, var.endpoint_port)

  # The ALB's name is unique per account and region, at most 32 characters: the environment's
  # name when it fits, else a prefix of it and a hash of the whole.
  endpoint_lb_name = length(local.name) <= 32 ? local.name : "${trimsuffix(substr(local.name, 0, 23), "-")}-${substr(sha1(local.name), 0, 8)}"

  # Internal when every client CIDR lies in a private range (clients in the VPC or a peered /
  # VPN-connected network reach an internal ALB's private addresses); internet-facing as soon
  # as one client network is public.
  endpoint_private_ranges = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]
  endpoint_internal = alltrue([
    for c in var.client_cidrs : anytrue([
      for r in local.endpoint_private_ranges :
      tonumber(split("/", c)[1]) >= tonumber(split("/", r)[1]) &&
      cidrhost("${cidrhost(c, 0)}/${split("/", r)[1]}", 0) == cidrhost(r, 0)
    ])
  ])

  endpoint_subnet_ids = (
    length(var.endpoint_subnet_ids) > 0 ? var.endpoint_subnet_ids :
    length(var.subnet_ids) > 0 ? var.subnet_ids :
    try(data.aws_subnets.endpoint_default[0].ids, [])
  )

  endpoint_log_prefix = "endpoint"

  # Regions older than August 2022 deliver ALB access logs from these Elastic Load Balancing
  # accounts (AWS documentation, "Enable access logs for your Application Load Balancer");
  # newer regions from the logdelivery.elasticloadbalancing.amazonaws.com service principal,
  # which the bucket policy grants everywhere.
  elb_log_accounts = {
    "af-south-1"     = "098369216593"
    "ap-east-1"      = "754344448648"
    "ap-northeast-1" = "582318560864"
    "ap-northeast-2" = "600734575887"
    "ap-northeast-3" = "383597477331"
    "ap-south-1"     = "718504428378"
    "ap-southeast-1" = "114774131450"
    "ap-southeast-2" = "783225319266"
    "ap-southeast-3" = "589379963580"
    "ca-central-1"   = "985666609251"
    "cn-north-1"     = "638102146993"
    "cn-northwest-1" = "037604701340"
    "eu-central-1"   = "054676820928"
    "eu-north-1"     = "897822967062"
    "eu-south-1"     = "635631232127"
    "eu-west-1"      = "156460612806"
    "eu-west-2"      = "652711504416"
    "eu-west-3"      = "009996457667"
    "me-south-1"     = "076674570225"
    "sa-east-1"      = "507241528517"
    "us-east-1"      = "127311923021"
    "us-east-2"      = "033677994240"
    "us-gov-east-1"  = "190560391635"
    "us-gov-west-1"  = "048591011584"
    "us-west-1"      = "027434742980"
    "us-west-2"      = "797873946194"
  }
}

data "aws_region" "endpoint" {
  count = var.endpoint_enabled ? 1 : 0
}

data "aws_caller_identity" "endpoint" {
  count = var.endpoint_enabled ? 1 : 0
}

# The default VPC's default subnets (one per zone), when neither endpoint_subnet_ids nor
# subnet_ids name any.
data "aws_subnets" "endpoint_default" {
  count = var.endpoint_enabled && length(var.endpoint_subnet_ids) == 0 && length(var.subnet_ids) == 0 ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [local.vpc_id]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

################################################################################
# Security group of the load balancer: endpoint_port from the clients, out to the nodes only
################################################################################

resource "aws_security_group" "endpoint" {
  count = var.endpoint_enabled ? 1 : 0

  name_prefix = "${local.name}-endpoint-"
  description = "stacklock endpoint of ${local.name}: HTTPS from client CIDRs, to the GPU nodes' endpoint port only"
  vpc_id      = local.vpc_id

  tags = merge(local.tags, { "Name" = "${local.name}-endpoint" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "endpoint_clients" {
  for_each = var.endpoint_enabled ? toset(var.client_cidrs) : toset([])

  security_group_id = aws_security_group.endpoint[0].id
  description       = "HTTPS to the model endpoint from client CIDR ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.endpoint_port
  to_port           = var.endpoint_port

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "endpoint_to_nodes" {
  count = var.endpoint_enabled ? 1 : 0

  security_group_id            = aws_security_group.endpoint[0].id
  description                  = "Requests and health checks to the GPU nodes' endpoint (nginx)"
  referenced_security_group_id = aws_security_group.this.id
  ip_protocol                  = "tcp"
  from_port                    = local.endpoint_target_port
  to_port                      = local.endpoint_target_port

  tags = local.tags
}

# With the endpoint, the nodes take client traffic from the load balancer alone; the
# client_cidrs rule of main.tf (`inference`) is then empty.
resource "aws_vpc_security_group_ingress_rule" "endpoint_from_lb" {
  count = var.endpoint_enabled ? 1 : 0

  security_group_id            = aws_security_group.this.id
  description                  = "Inference requests and health checks from the environment's load balancer"
  referenced_security_group_id = aws_security_group.endpoint[0].id
  ip_protocol                  = "tcp"
  from_port                    = local.endpoint_target_port
  to_port                      = local.endpoint_target_port

  tags = local.tags
}

################################################################################
# Access logs: a bucket per environment (ALB access logs support SSE-S3 only)
################################################################################

resource "aws_s3_bucket" "endpoint_logs" {
  #checkov:skip=CKV_AWS_18:this bucket receives the load balancer's access logs; logging its own accesses to itself would loop, and CloudTrail data events are the account's choice
  #checkov:skip=CKV_AWS_144:access logs of one environment's endpoint; cross-region replication is the account's retention policy, not the module's
  #checkov:skip=CKV_AWS_145:ALB access log delivery supports SSE-S3 only (AWS documentation); a KMS key would stop the logs
  #checkov:skip=CKV2_AWS_62:nothing consumes new log objects; event notifications have no destination here
  count = var.endpoint_enabled ? 1 : 0

  bucket_prefix = "${substr(local.name, 0, 26)}-lb-logs-"
  # Destroying the environment (or setting endpoint_enabled = false) removes its access logs
  # too; copy them first when they must outlive it.
  force_destroy = true

  tags = merge(local.tags, { "Name" = "${local.name}-endpoint-logs" })
}

resource "aws_s3_bucket_public_access_block" "endpoint_logs" {
  count = var.endpoint_enabled ? 1 : 0

  bucket                  = aws_s3_bucket.endpoint_logs[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "endpoint_logs" {
  count = var.endpoint_enabled ? 1 : 0

  bucket = aws_s3_bucket.endpoint_logs[0].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "endpoint_logs" {
  count = var.endpoint_enabled ? 1 : 0

  bucket = aws_s3_bucket.endpoint_logs[0].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_versioning" "endpoint_logs" {
  count = var.endpoint_enabled ? 1 : 0

  bucket = aws_s3_bucket.endpoint_logs[0].id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "endpoint_logs" {
  count = var.endpoint_enabled ? 1 : 0

  bucket = aws_s3_bucket.endpoint_logs[0].id

  rule {
    id     = "expire-access-logs"
    status = "Enabled"

    filter {}

    expiration {
      days = var.endpoint_access_log_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.endpoint_logs]
}

data "aws_iam_policy_document" "endpoint_logs" {
  count = var.endpoint_enabled ? 1 : 0

  statement {
    sid       = "ELBLogDelivery"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.endpoint_logs[0].arn}/${local.endpoint_log_prefix}/AWSLogs/${data.aws_caller_identity.endpoint[0].account_id}/*"]

    principals {
      type        = "Service"
      identifiers = ["logdelivery.elasticloadbalancing.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = contains(keys(local.elb_log_accounts), data.aws_region.endpoint[0].region) ? [local.elb_log_accounts[data.aws_region.endpoint[0].region]] : []

    content {
      sid       = "ELBLogDeliveryRegionAccount"
      actions   = ["s3:PutObject"]
      resources = ["${aws_s3_bucket.endpoint_logs[0].arn}/${local.endpoint_log_prefix}/AWSLogs/${data.aws_caller_identity.endpoint[0].account_id}/*"]

      principals {
        type        = "AWS"
        identifiers = ["arn:${data.aws_partition.current.partition}:iam::${statement.value}:root"]
      }
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.endpoint_logs[0].arn, "${aws_s3_bucket.endpoint_logs[0].arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "endpoint_logs" {
  count = var.endpoint_enabled ? 1 : 0

  bucket = aws_s3_bucket.endpoint_logs[0].id
  policy = data.aws_iam_policy_document.endpoint_logs[0].json

  depends_on = [aws_s3_bucket_public_access_block.endpoint_logs]
}

################################################################################
# The load balancer, its HTTPS listener and the nodes' target group
################################################################################

resource "aws_lb" "endpoint" {
  #checkov:skip=CKV_AWS_150:the ALB holds no data and is rebuilt from this module; deletion protection would make `stacklock destroy` and endpoint_enabled = false fail half-way (every destroy is planned, shown and approved first)
  #checkov:skip=CKV2_AWS_28:clients are limited to client_cidrs by the ALB's security group and the model API asks for its credential; a WAF web ACL (rate limits, managed rules) is the site's choice, associated outside this module
  count = var.endpoint_enabled ? 1 : 0

  name               = local.endpoint_lb_name
  load_balancer_type = "application"
  internal           = local.endpoint_internal
  security_groups    = [aws_security_group.endpoint[0].id]
  subnets            = local.endpoint_subnet_ids

  drop_invalid_header_fields = true
  desync_mitigation_mode     = "defensive"
  enable_deletion_protection = false
  idle_timeout               = var.endpoint_idle_timeout

  access_logs {
    bucket  = aws_s3_bucket.endpoint_logs[0].id
    prefix  = local.endpoint_log_prefix
    enabled = true
  }

  tags = merge(local.tags, { "Name" = "${local.name}-endpoint" })

  lifecycle {
    precondition {
      condition     = try(split(":", var.endpoint_acm_certificate_arn)[3], "") == data.aws_region.endpoint[0].region
      error_message = "endpoint_acm_certificate_arn must name an ACM certificate in the environment's own region (${data.aws_region.endpoint[0].region}): a load balancer cannot use a certificate of another region."
    }

    precondition {
      condition     = length(local.endpoint_subnet_ids) >= 2
      error_message = "The endpoint's load balancer needs subnets in at least two availability zones: set endpoint_subnet_ids (public subnets for an internet-facing endpoint), give two or more subnet_ids, or use a default VPC with default subnets."
    }

    precondition {
      condition     = length(var.endpoint_subnet_ids) == 0 || var.vpc_id != null
      error_message = "endpoint_subnet_ids need vpc_id: the load balancer's security group must live in the subnets' VPC."
    }
  }

  # Enabling access logs makes ELB write a test object: the bucket policy must exist first.
  depends_on = [aws_s3_bucket_policy.endpoint_logs]
}

resource "aws_lb_target_group" "endpoint" {
  count = var.endpoint_enabled ? 1 : 0

  # A prefix, not a name: a changed port or protocol replaces the group before the old goes.
  name_prefix      = "slep-"
  target_type      = "instance"
  vpc_id           = local.vpc_id
  port             = local.endpoint_target_port
  protocol         = var.endpoint_target_protocol
  protocol_version = "HTTP1"

  # Inference requests differ widely in cost: send each to the node with the fewest open ones.
  load_balancing_algorithm_type = "least_outstanding_requests"
  # In-flight predictions may finish on a node that leaves (replacement, scale-in).
  deregistration_delay = 60

  health_check {
    enabled             = true
    protocol            = var.endpoint_target_protocol
    port                = "traffic-port"
    path                = var.endpoint_health_check_path
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = merge(local.tags, { "Name" = "${local.name}-endpoint" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_target_group_attachment" "endpoint" {
  # Index i is aws_instance.this[i]: a replaced node is registered under the same index.
  count = var.endpoint_enabled ? var.instance_count : 0

  target_group_arn = aws_lb_target_group.endpoint[0].arn
  target_id        = aws_instance.this[count.index].id
  port             = local.endpoint_target_port
}

resource "aws_lb_listener" "endpoint" {
  count = var.endpoint_enabled ? 1 : 0

  load_balancer_arn = aws_lb.endpoint[0].arn
  port              = var.endpoint_port
  protocol          = "HTTPS"
  # TLS 1.3 and 1.2, forward-secret AEAD ciphers only ("Res"), and the hybrid post-quantum
  # key exchange (ML-KEM) for clients that offer it ("PQ"; the others get ECDHE).
  ssl_policy      = "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09"
  certificate_arn = var.endpoint_acm_certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.endpoint[0].arn
  }

  tags = merge(local.tags, { "Name" = "${local.name}-endpoint" })
}
